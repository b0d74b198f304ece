"""Finding a checkpoint: a local directory, or a Hugging Face hub id resolved through huggingface-hub."""

import os
import re
from pathlib import Path

from .checkpoint import WEIGHTS_FILE, pooling_configs

# Only what e5np reads; a hub repo also holds pytorch_model.bin, ONNX exports and more that we never fetch. A Pooling
# module that modules.json puts elsewhere than 1_Pooling/ is fetched once modules.json has said where.
NEEDED_FILES = [
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
    "special_tokens_map.json", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
    "config_sentence_transformers.json",
]


class ModelNotFoundError(OSError):
    """The name is neither a checkpoint directory nor a hub id that could be resolved."""


# "name" or "owner/name", each part letters, digits, "-", "_", "." and not starting with a symbol
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def resolve(name_or_path, *, revision=None, local_files_only=None, cache_dir=None, token=None):
    """A directory holding the checkpoint's files.

    A local directory is used as it is. Anything else is a hub id: huggingface-hub finds it in its
    cache (HF_HOME / HF_HUB_CACHE, or `cache_dir`) or downloads NEEDED_FILES. With HF_HUB_OFFLINE=1
    or local_files_only=True it only looks in the cache.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"a model is a hub id or a directory (str or path), got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    path = os.path.expanduser(name)                                    # "~/models/e5-small" as a shell would read it
    if os.path.isdir(path):                                            # (not Path(name): Path("") is ".")
        return Path(path)
    if os.path.isfile(path):
        raise ModelNotFoundError(f"{name} is a file: pass the directory that holds the checkpoint's files")
    if not HUB_ID.fullmatch(name):
        raise ModelNotFoundError(f"{name!r}: no such directory, and not a hub id of the form owner/name")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError

    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")

    def download(files, revision):
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, token=token,
                                      local_files_only=bool(local_files_only), allow_patterns=files))

    try:
        directory = download(NEEDED_FILES, revision)
        elsewhere = [f for f in pooling_configs(directory) if not (directory / f).is_file()]
        if elsewhere:                         # modules.json puts Pooling outside 1_Pooling/: from the same commit
            directory = download(elsewhere, revision=directory.name)   # (a snapshot's folder is named by its commit)
    except HFValidationError as e:
        raise ModelNotFoundError(f"{name}: no such directory, and not a valid hub id ({e})") from None
    except LocalEntryNotFoundError:
        where = "is not in the Hugging Face cache" + (" and downloads are off (HF_HUB_OFFLINE / local_files_only)"
                                                      if offline else " and the hub could not be reached")
        at = f" --revision {revision}" if revision else ""            # `hf`: huggingface-hub 2 has no huggingface-cli
        raise ModelNotFoundError(
            f"{name}{'@' + revision if revision else ''} {where}. Download it where there is network "
            f"(`hf download {name}{at}` fills the cache; `hf download {name}{at} --local-dir DIR` makes a directory), "
            "or pass a local directory that holds config.json, model.safetensors and tokenizer.json (`--model DIR` or "
            "the E5NP_MODEL environment variable on the command line, e5np.load(DIR) in Python).") from None
    except HfHubHTTPError as e:
        raise ModelNotFoundError(f"{name}: the hub refused the request ({e})") from None
    if not (directory / WEIGHTS_FILE).is_file():                       # (pytorch_model.bin is never downloaded)
        raise ModelNotFoundError(
            f"{name}{'@' + revision if revision else ''} has no {WEIGHTS_FILE} ({directory}), the only weights e5np "
            "reads: the repo has none at that revision, or its cached snapshot lacks it. A repo with only "
            "pytorch_model.bin may have a safetensors copy on a pull-request branch (revision=\"refs/pr/N\"); or "
            "convert it with transformers (AutoModel.from_pretrained(id).save_pretrained(dir, "
            "safe_serialization=True)) and pass the directory.")
    return directory
