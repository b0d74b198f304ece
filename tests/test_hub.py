"""Hub ids resolve through huggingface-hub's cache, offline, exactly as a user's machine would.

Each case runs in a fresh interpreter: huggingface-hub reads HF_HUB_OFFLINE and HF_HUB_CACHE at import.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import e5np
from tests.row_independence import assert_same_vectors

REPO = "intfloat/e5-small"
COMMIT = "a" * 40
TEXTS = ["query: how much protein should a female eat", "passage: hello"]


def lay_out_cache(cache, source, repo=REPO, commit=COMMIT):
    """huggingface-hub's cache layout: blobs/<hash>, snapshots/<commit>/<file> -> blob, refs/main = commit."""
    root = Path(cache) / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for path in Path(source).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(data)
            link = root / "snapshots" / commit / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    return root


def run_load(cache, out, offline=True, extra_env=None, **load_kwargs):
    code = (
        "import sys, json, numpy as np, e5np\n"
        f"model = e5np.load({REPO!r}, **json.loads(sys.argv[2]))\n"
        f"np.save(sys.argv[1], model.encode({TEXTS!r}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(cache), HF_HOME=str(Path(cache).parent / "hf-home"), **(extra_env or {}))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-c", code, str(out), json.dumps(load_kwargs)],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, e5_shaped_dir):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    lay_out_cache(cache, e5_shaped_dir)
    return cache


@pytest.fixture(scope="module")
def direct_vectors(load_model):
    return load_model("e5-shaped").encode(TEXTS)


def test_offline_hub_id_resolves_from_cache(cache, direct_vectors, tmp_path):
    result = run_load(cache, tmp_path / "v.npy")
    assert result.returncode == 0, result.stderr
    assert_same_vectors(np.load(tmp_path / "v.npy"), direct_vectors)


def test_revision_and_local_files_only(cache, direct_vectors, tmp_path):
    result = run_load(cache, tmp_path / "v.npy", offline=False, revision=COMMIT, local_files_only=True)
    assert result.returncode == 0, result.stderr
    assert_same_vectors(np.load(tmp_path / "v.npy"), direct_vectors)


def test_uncached_model_offline_fails_clearly(tmp_path):
    result = run_load(tmp_path / "empty-cache", tmp_path / "v.npy")
    assert result.returncode != 0
    assert "ModelNotFoundError" in result.stderr
    assert "intfloat/e5-small is not in the Hugging Face cache and downloads are off" in result.stderr


def test_unknown_revision_offline_fails_clearly(cache, tmp_path):
    result = run_load(cache, tmp_path / "v.npy", revision="v9.9")
    assert result.returncode != 0 and "intfloat/e5-small@v9.9 is not in the Hugging Face cache" in result.stderr


def test_unreachable_hub_fails_fast_and_clearly(tmp_path):
    """Online mode with the hub unreachable (a closed local port): an error, not a hang."""
    result = run_load(tmp_path / "empty-cache", tmp_path / "v.npy", offline=False,
                      extra_env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "5"})
    assert result.returncode != 0
    assert "could not be reached" in result.stderr and "pass a local directory" in result.stderr


def test_invalid_hub_id():
    for name in ("not a//valid id!", "./relative/dir", "a/b/c", "-leading-dash"):
        with pytest.raises(e5np.ModelNotFoundError, match="no such directory, and not a hub id"):
            e5np.load(name)


def test_every_file_e5np_reads_is_downloaded():
    """A hub model is fetched with allow_patterns=NEEDED_FILES: a file missing there is silently never read (the
    prompts of config_sentence_transformers.json and sentence_bert_config.json's max_seq_length were not)."""
    from e5np import checkpoint, hub, tokenizer

    read = {checkpoint.WEIGHTS_FILE, checkpoint.CONFIG_FILE, checkpoint.ST_MODULES, checkpoint.ST_PROMPTS_FILE,
            "1_Pooling/config.json", tokenizer.TOKENIZER_FILE, tokenizer.VOCAB_FILE, tokenizer.TOKENIZER_CONFIG_FILE,
            tokenizer.ST_CONFIG_FILE}
    assert read <= set(hub.NEEDED_FILES)


def fake_hub(repo, tmp_path, monkeypatch):
    """huggingface_hub.snapshot_download replaced by a hub holding `repo`'s files: it copies the files asked for
    into a snapshot folder named by the commit, as the cache does. Returns the (revision, allow_patterns) of each
    request, as they come."""
    import fnmatch
    import shutil

    import huggingface_hub

    requests = []

    def snapshot_download(repo_id, revision=None, cache_dir=None, token=None, local_files_only=False,
                          allow_patterns=None):
        requests.append((revision, allow_patterns))
        snapshot = tmp_path / COMMIT
        snapshot.mkdir(exist_ok=True)
        for path in repo.rglob("*"):
            name = path.relative_to(repo).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, snapshot / name)
        return str(snapshot)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return requests


def test_a_pooling_module_outside_1_pooling_is_downloaded(checkpoint_dirs, tmp_path, monkeypatch):
    """Downloads fetch NEEDED_FILES only; a modules.json that puts its Pooling module in another folder has that
    folder's config fetched in a second request, once modules.json has said where (it was never fetched, and the
    load failed on a missing file)."""
    import shutil

    repo = tmp_path / "repo"                                           # the hub's copy: CLS pooling, in pooling/
    shutil.copytree(checkpoint_dirs["st-cls"], repo)
    (repo / "1_Pooling").rename(repo / "pooling")
    modules = json.loads((repo / "modules.json").read_text())
    (repo / "modules.json").write_text(json.dumps([dict(m, path="pooling") if m["path"] == "1_Pooling" else m
                                                   for m in modules]))
    (repo / "pytorch_model.bin").write_bytes(b"never fetched")
    requests = fake_hub(repo, tmp_path, monkeypatch)
    model = e5np.load("someone/st-cls-elsewhere")
    assert requests[1:] == [(COMMIT, ["pooling/config.json"])]          # pinned: main may have moved meanwhile
    assert model.pooling == "cls" and not (tmp_path / COMMIT / "pytorch_model.bin").exists()
    assert_same_vectors(model.encode(TEXTS), e5np.load(checkpoint_dirs["st-cls"]).encode(TEXTS))


def test_a_hub_repo_without_safetensors_weights_is_named_with_what_to_do(checkpoint_dirs, tmp_path, monkeypatch):
    """A repo with only pytorch_model.bin (never downloaded: e5np does not unpickle) said just "file not found" about
    a path in the cache."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(checkpoint_dirs["st-cls"], repo)
    (repo / "model.safetensors").rename(repo / "pytorch_model.bin")
    fake_hub(repo, tmp_path, monkeypatch)
    with pytest.raises(e5np.ModelNotFoundError) as error:
        e5np.load("someone/old-model", revision="main")
    message = str(error.value)
    assert message.startswith("someone/old-model@main has no model.safetensors (")
    assert 'revision="refs/pr/N"' in message and "safe_serialization=True" in message
    assert not (tmp_path / COMMIT / "pytorch_model.bin").exists()
