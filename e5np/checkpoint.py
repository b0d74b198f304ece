"""Reading a BERT checkpoint directory: config.json and model.safetensors, strictly.

The loader knows the complete list of tensors a BERT encoder with a given config must have, and
their shapes. It refuses a checkpoint that lacks one, carries one it does not know, or has one of
the wrong shape, and says which, in which file. It never unpickles anything.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# Tensors a checkpoint may carry that the encoder does not use: the [CLS] pooler head of
# BertModel and the position-id buffer that older transformers versions saved.
IGNORED_PREFIXES = ("pooler.",)
IGNORED_NAMES = ("embeddings.position_ids", "embeddings.token_type_ids")
OPTIONAL_PREFIXES = ("bert.", "roberta.")  # *For* task checkpoints nest the encoder under these

# Architectures that are BERT encoders with different bookkeeping. RoBERTa and XLM-RoBERTa
# (multilingual-e5) number positions from pad_token_id + 1, so their position table is
# pad_token_id + 1 rows longer than the longest input.
ROBERTA_TYPES = ("roberta", "xlm-roberta")
SUPPORTED_MODEL_TYPES = ("bert",) + ROBERTA_TYPES

SUPPORTED_ACTIVATIONS = ("gelu",)  # transformers' "gelu" is the exact erf form


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not describe a BERT encoder e5np can run."""


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    model_type: str = "bert"
    position_offset: int = 0  # index of the first token's position embedding
    pad_token_id: int = 0

    @property
    def head_size(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def max_tokens(self):
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_dict(cls, d, source=CONFIG_FILE):
        def problem(message):
            return CheckpointError(f"{source}: {message}")

        model_type = d.get("model_type", "bert")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise problem(f"model_type {model_type!r} is not supported; e5np runs BERT-family encoders "
                          f"({', '.join(SUPPORTED_MODEL_TYPES)})")
        activation = d.get("hidden_act", "gelu")
        if activation not in SUPPORTED_ACTIVATIONS:
            raise problem(f"hidden_act {activation!r} is not supported; e5np implements {SUPPORTED_ACTIVATIONS}")
        position_type = d.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise problem(f"position_embedding_type {position_type!r} is not supported; only 'absolute' is")

        sizes = {}
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            if name not in d:
                raise problem(f"missing required field {name!r}")
            sizes[name] = d[name]
        sizes["type_vocab_size"] = d.get("type_vocab_size", 2)
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise problem(f"{name} must be a positive integer, got {value!r}")
        if sizes["hidden_size"] % sizes["num_attention_heads"]:
            raise problem(f"hidden_size {sizes['hidden_size']} is not divisible by "
                          f"num_attention_heads {sizes['num_attention_heads']}")
        eps = d.get("layer_norm_eps", 1e-12)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise problem(f"layer_norm_eps must be a small positive number, got {eps!r}")
        pad = d.get("pad_token_id", 1 if model_type in ROBERTA_TYPES else 0)
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < sizes["vocab_size"]:
            raise problem(f"pad_token_id must be a token id below vocab_size, got {pad!r}")
        offset = pad + 1 if model_type in ROBERTA_TYPES else 0
        if offset >= sizes["max_position_embeddings"] - 1:
            raise problem(f"max_position_embeddings {sizes['max_position_embeddings']} leaves no room past "
                          f"pad_token_id {pad} for {model_type} positions")
        return cls(**sizes, layer_norm_eps=float(eps), model_type=model_type, position_offset=offset, pad_token_id=pad)


def read_json(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable as JSON ({e})") from None


def load_config(directory):
    path = Path(directory) / CONFIG_FILE
    if not path.exists() and not (Path(directory) / WEIGHTS_FILE).exists():   # not a checkpoint: say so, not which file
        raise CheckpointError(f"{directory} holds no checkpoint (no {CONFIG_FILE}, no {WEIGHTS_FILE}): pass the "
                              f"directory that holds {CONFIG_FILE}, {WEIGHTS_FILE} and tokenizer.json")
    d = read_json(path)
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return BertConfig.from_dict(d, source=str(path))


def expected_shapes(config):
    """Every tensor name of a BERT encoder (transformers' BertModel naming) and its shape."""
    H, F = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, H),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (H, H)
            shapes[p + f"attention.self.{name}.bias"] = (H,)
        shapes[p + "attention.output.dense.weight"] = (H, H)
        shapes[p + "attention.output.dense.bias"] = (H,)
        shapes[p + "attention.output.LayerNorm.weight"] = (H,)
        shapes[p + "attention.output.LayerNorm.bias"] = (H,)
        shapes[p + "intermediate.dense.weight"] = (F, H)  # torch Linear stores [out, in]
        shapes[p + "intermediate.dense.bias"] = (F,)
        shapes[p + "output.dense.weight"] = (H, F)
        shapes[p + "output.dense.bias"] = (H,)
        shapes[p + "output.LayerNorm.weight"] = (H,)
        shapes[p + "output.LayerNorm.bias"] = (H,)
    return shapes


def _list(names, limit=8):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _open_safetensors(path):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _read_tensor(handle, path, name, dtype):
    """One tensor as a `dtype` array. bfloat16, which NumPy lacks, is widened bit-exactly."""
    from safetensors import SafetensorError

    stored = handle.get_slice(name).get_dtype()
    try:
        if stored == "BF16":
            raw = _read_raw(path, name)
            return (raw.astype(np.uint32) << 16).view(np.float32).astype(dtype)
        if stored not in ("F16", "F32", "F64"):
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {stored}; expected a float type")
        return handle.get_tensor(name).astype(dtype, copy=False)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: tensor {name!r} could not be read ({e})") from None


def _read_raw(path, name):
    """The bytes of a bfloat16 tensor as uint16, located from the safetensors header.

    Format: an 8-byte little-endian header length, a JSON header mapping names to
    {dtype, shape, data_offsets}, then the tensor bytes (offsets relative to the end of the header).
    """
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(header_length))[name]
    start, end = entry["data_offsets"]
    data = np.memmap(path, dtype=np.uint16, mode="r", offset=8 + header_length + start,
                     shape=((end - start) // 2,))
    return np.array(data).reshape(entry["shape"])


def load_weights(directory, config, dtype=np.float32):
    """Read model.safetensors into the nested dict `e5np.reference` and `e5np.engine` take, checking every name and
    shape."""
    directory = Path(directory)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        if (directory / "pytorch_model.bin").is_file():
            raise CheckpointError(
                f"{path}: file not found. The directory has only pytorch_model.bin, a pickle that e5np will not "
                "load because unpickling can execute code. Convert it once with transformers: "
                "AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
        if (directory / "model.safetensors.index.json").is_file():
            raise CheckpointError(f"{path}: sharded checkpoints (model.safetensors.index.json) are not supported")
        raise CheckpointError(f"{path}: file not found")

    handle = _open_safetensors(path)
    expected = expected_shapes(config)
    stored = {}  # canonical name -> name in the file
    unexpected = []
    for name in handle.keys():
        canonical = next((name[len(p):] for p in OPTIONAL_PREFIXES if name.startswith(p)), name)
        if canonical.startswith(IGNORED_PREFIXES) or canonical in IGNORED_NAMES:
            continue
        if canonical not in expected:
            unexpected.append(name)
        elif canonical in stored:
            raise CheckpointError(f"{path}: tensor {canonical!r} is stored twice ({stored[canonical]!r} and {name!r})")
        else:
            stored[canonical] = name
    missing = set(expected) - set(stored)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {_list(unexpected)}")
        raise CheckpointError(f"{path}: does not match {CONFIG_FILE} "
                              f"({config.num_hidden_layers} layers, hidden {config.hidden_size}); " + "; ".join(parts))

    tensors = {}
    for canonical, name in stored.items():
        shape = tuple(handle.get_slice(name).get_shape())
        if shape != expected[canonical]:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(shape)}, "
                                  f"but {CONFIG_FILE} implies {list(expected[canonical])}")
        tensors[canonical] = _read_tensor(handle, path, name, dtype)
        if not np.isfinite(tensors[canonical]).all():
            raise CheckpointError(f"{path}: tensor {name!r} contains NaN or infinite values")
    return nest(tensors, config)


def nest(tensors, config):
    """Flat transformers names -> the nested dict of `e5np.reference` and `e5np.engine`, linear weights as [in, out].

    The linear weights are taken out of `tensors` (each original is freed as soon as it is copied).
    """

    def linear(prefix):  # torch stores [out, in]; BLAS multiplies a contiguous [in, out] copy faster than .T
        weight = tensors.pop(prefix + ".weight")
        return {"w": np.ascontiguousarray(weight.T), "b": tensors[prefix + ".bias"]}

    def norm(prefix):
        return {"g": tensors[prefix + ".weight"], "b": tensors[prefix + ".bias"]}

    layers = []
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        layers.append({
            "attention": {
                "query": linear(p + "attention.self.query"),
                "key": linear(p + "attention.self.key"),
                "value": linear(p + "attention.self.value"),
                "output": linear(p + "attention.output.dense"),
            },
            "attention_norm": norm(p + "attention.output.LayerNorm"),
            "ffn": {"up": linear(p + "intermediate.dense"), "down": linear(p + "output.dense")},
            "ffn_norm": norm(p + "output.LayerNorm"),
        })
    return {
        "embeddings": {
            "word": tensors["embeddings.word_embeddings.weight"],
            "position": tensors["embeddings.position_embeddings.weight"],
            "token_type": tensors["embeddings.token_type_embeddings.weight"],
            "norm": norm("embeddings.LayerNorm"),
        },
        "layers": layers,
    }


# --- sentence-transformers layout ----------------------------------------------------------------
ST_MODULES = "modules.json"
ST_PROMPTS_FILE = "config_sentence_transformers.json"
ST_POOLING_MODES = {  # 1_Pooling/config.json flag -> e5np.reference.POOLINGS key
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
ST_UNSUPPORTED_MODES = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
# sentence-transformers 6 writes {"pooling_mode": "mean", "include_prompt": true, ...} instead of those flags
ST6_POOLING_MODES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len"}


def load_sentence_transformers_head(directory):
    """(pooling, normalize) from a sentence-transformers modules.json, or None if there is none.

    Supported pipelines: Transformer -> Pooling (one of mean, cls, max, mean_sqrt_len) -> optional Normalize.
    """
    directory = Path(directory)
    path = directory / ST_MODULES
    if not path.is_file():
        return None
    modules = read_json(path)
    if not isinstance(modules, list):
        raise CheckpointError(f"{path}: expected a JSON list of modules")
    pooling, normalize = None, False
    for module in modules:
        kind = _module_kind(module)
        if kind == "Transformer":
            continue
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            pooling = _read_pooling(directory / _pooling_config(module))
        else:
            raise CheckpointError(f"{path}: module {module!r} is not supported "
                                  "(e5np runs Transformer -> Pooling -> Normalize)")
    if pooling is None:
        raise CheckpointError(f"{path}: no Pooling module")
    return pooling, normalize


def _module_kind(module):
    """"Pooling" for {"type": "sentence_transformers.models.Pooling", ...}; "" for what is not a module."""
    return str(module.get("type", "")).rsplit(".", 1)[-1] if isinstance(module, dict) else ""


def _pooling_config(module):
    return f"{module.get('path', '1_Pooling')}/{CONFIG_FILE}"


def pooling_configs(directory):
    """The pooling config files a sentence-transformers modules.json names, relative to directory ("1_Pooling/
    config.json" as a rule); [] without modules.json, or for one load_sentence_transformers_head would refuse."""
    path = Path(directory) / ST_MODULES
    modules = read_json(path) if path.is_file() else []
    return [_pooling_config(m) for m in modules if _module_kind(m) == "Pooling"] if isinstance(modules, list) else []


def _read_pooling(path):
    """The e5np.reference.POOLINGS key a sentence-transformers Pooling config names, in either of its formats."""
    settings = read_json(path)
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if "pooling_mode" in settings:                                     # sentence-transformers >= 6
        mode = settings["pooling_mode"]
        mode = mode[0] if isinstance(mode, list) and len(mode) == 1 else mode    # ["mean"]: one mode, as a list
        if not isinstance(mode, str) or mode not in ST6_POOLING_MODES:
            raise CheckpointError(f"{path}: pooling_mode {mode!r} is not supported; e5np supports one of "
                                  f"{sorted(ST6_POOLING_MODES)}")
        mode = ST6_POOLING_MODES[mode]
    else:                                                              # before: one pooling_mode_<mode>_... flag
        flags_set = sorted(flag for flag in (*ST_POOLING_MODES, *ST_UNSUPPORTED_MODES) if settings.get(flag))
        # No mode named (no flags, or all false) is mean pooling: sentence-transformers' default, and what its
        # version 6 makes of such a config.
        flags_set = flags_set or ["pooling_mode_mean_tokens"]
        if len(flags_set) != 1 or flags_set[0] not in ST_POOLING_MODES:
            raise CheckpointError(f"{path}: e5np supports exactly one of {sorted(ST_POOLING_MODES)}; "
                                  f"this sets {flags_set}")
        mode = ST_POOLING_MODES[flags_set[0]]
    if settings.get("include_prompt") is False:
        raise CheckpointError(f"{path}: include_prompt false is not supported: sentence-transformers then pools "
                              "without the prompt's tokens (CLS pooling too takes the first token after it), e5np "
                              "pools over every token of a text")
    return mode


def _prompt_settings(directory):
    """(path, the object in config_sentence_transformers.json): {} when there is none, or it holds no object."""
    path = Path(directory) / ST_PROMPTS_FILE
    settings = read_json(path) if path.is_file() else {}
    return path, settings if isinstance(settings, dict) else {}


def load_default_prompt(directory):
    """The prompt sentence-transformers' encode() adds to texts given no other: config_sentence_transformers.json's
    prompts[default_prompt_name], "" when it names none. A name that is not among the prompts is refused, as
    sentence-transformers refuses it."""
    path, settings = _prompt_settings(directory)
    name = settings.get("default_prompt_name")
    if name is None:
        return ""
    prompts = settings.get("prompts")
    prompts = prompts if isinstance(prompts, dict) else {}
    if not isinstance(name, str) or name not in prompts:
        raise CheckpointError(f"{path}: default_prompt_name {name!r} is not one of its prompts {sorted(prompts)}")
    prompt = prompts[name]
    if prompt is not None and not isinstance(prompt, str):
        raise CheckpointError(f"{path}: prompts[{name!r}] must be a string, got {prompt!r}")
    return prompt or ""                                                # null: no prompt (sentence-transformers too)


# The prompts for queries and passages: the first of these names declared, as sentence-transformers' encode_query
# and encode_document look for them (its version 6 declares "query" and "document" for every model, "" when not
# given, so there "passage" and "corpus" are never reached; e5np reads a checkpoint's "passage" prompt all the same)
PROMPT_NAMES = {"query": ("query",), "passage": ("document", "passage", "corpus")}


def load_prompts(directory):
    """Query/passage prompts declared in config_sentence_transformers.json, if any. An empty prompt is no
    declaration: sentence-transformers 6 saves {"query": "", "document": ""} for a model given none (an E5
    fine-tuned and saved with it still wants E5's prefixes)."""
    prompts = _prompt_settings(directory)[1].get("prompts")
    if not isinstance(prompts, dict):
        return {}
    found = {}
    for key, names in PROMPT_NAMES.items():
        declared = [prompts[name] for name in names if name in prompts]
        if declared and isinstance(declared[0], str) and declared[0]:
            found[key] = declared[0]
    return found
