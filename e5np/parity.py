"""The reference side of parity: run Hugging Face transformers on the same checkpoint and texts.

torch and transformers are not e5np dependencies. They are imported here, lazily, only when a
parity check is asked for; install them with `pip install "e5np[parity]"`.
"""

from dataclasses import dataclass

import numpy as np

PARITY_EXTRA_HINT = 'this needs torch and transformers: pip install "e5np[parity]"'


def import_reference_stack():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"{PARITY_EXTRA_HINT} ({e})") from None
    return torch, transformers


@dataclass
class Reference:
    """What transformers computed: the same fields as e5np.Forward, as NumPy arrays."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    hidden_states: list   # embedding output + each layer, [B, T, H]
    attentions: list      # per layer [B, N, T, T]
    pooled: np.ndarray    # [B, H]
    embeddings: np.ndarray  # [B, H]
    versions: dict


def average_pool(last_hidden_states, attention_mask):
    """E5's pooling, as its model card writes it: mean of the real tokens' last hidden states."""
    last_hidden = last_hidden_states.masked_fill(~attention_mask[..., None].bool(), 0.0)
    return last_hidden.sum(dim=1) / attention_mask.sum(dim=1)[..., None]


def cls_pool(last_hidden_states, attention_mask):
    return last_hidden_states[:, 0]


def max_pool(last_hidden_states, attention_mask):
    """sentence-transformers' max pooling: padding set to -1e9, then the largest value of each feature."""
    return last_hidden_states.masked_fill(~attention_mask[..., None].bool(), -1e9).max(dim=1).values


def mean_sqrt_len_pool(last_hidden_states, attention_mask):
    """The real tokens' sum over the square root of their number."""
    last_hidden = last_hidden_states.masked_fill(~attention_mask[..., None].bool(), 0.0)
    return last_hidden.sum(dim=1) / attention_mask.sum(dim=1)[..., None].to(last_hidden.dtype).sqrt()


REFERENCE_POOLINGS = {"mean": average_pool, "cls": cls_pool, "max": max_pool, "mean_sqrt_len": mean_sqrt_len_pool}


def transformers_forward(directory, texts, max_length, dtype="float32", output_attentions=False, pooling="mean"):
    """transformers' model (BertModel / XLMRobertaModel, eager attention) + a pooling written in torch (E5's
    average_pool by default) + F.normalize on `texts`, one padded batch."""
    torch, transformers = import_reference_stack()
    transformers.logging.set_verbosity_error()  # its load report and progress bars would drown the output
    transformers.logging.disable_progress_bar()
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model, loading = transformers.AutoModel.from_pretrained(
        str(directory), attn_implementation="eager", add_pooling_layer=False, output_loading_info=True)
    if loading["missing_keys"]:  # transformers would fill them with random values and carry on
        raise ValueError(f"{directory}: transformers found no weights for {sorted(loading['missing_keys'])}")
    model = model.to(torch_dtype).eval()
    batch = tokenizer(list(texts), max_length=max_length, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True, output_attentions=output_attentions)
        pooled = REFERENCE_POOLINGS[pooling](out.last_hidden_state, batch["attention_mask"])
        embeddings = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return Reference(
        input_ids=batch["input_ids"].numpy(),
        attention_mask=batch["attention_mask"].numpy(),
        hidden_states=[h.numpy() for h in out.hidden_states],
        attentions=[a.numpy() for a in out.attentions] if output_attentions else None,
        pooled=pooled.numpy(),
        embeddings=embeddings.numpy(),
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
    )


# --- the parity report ---------------------------------------------------------------------------
DEFAULT_TEXTS = [
    "query: how much protein should a female eat",
    "query: summit define",
    "passage: As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is "
    "46 grams per day. But, as you can see from this chart, you'll need to increase that if you're expecting "
    "or training for a marathon. Check out the chart below to see how much protein you should be eating each day.",
    "passage: Definition of summit for English Language Learners. : 1 the highest point of a mountain : the top "
    "of a mountain. : 2 the highest level. : 3 a meeting or series of meetings between the leaders of two or "
    "more governments.",
    "passage: Crème brûlée, 東京, emoji 👍🏽, code `x = f(y)`, and [SEP] written out.",
]


def compare(ours, theirs):
    """max |a - b|, and that relative to the reference tensor's largest magnitude."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    diff = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    scale = float(np.abs(theirs).max()) if theirs.size else 0.0
    return diff, diff / scale if scale else 0.0


def parity_report(directory, texts, max_length, tolerance=1e-6):
    """e5np vs transformers on one padded batch, stage by stage, each engine also against float64 truth.

    Rows: the embedding layer's output, every encoder layer (real tokens only), the pooled vectors (the model's
    pooling: E5's mean, or what its sentence-transformers config says) and those L2-normalized (whether or not
    the model normalizes its output: the parity bar is for unit vectors). Ground truth is e5np in float64, which
    agrees with transformers in float64 (also reported) to ~1e-14.
    """
    from .reference import l2_normalize
    from .model import load
    from .tokenizer import lowercases_first

    model = load(directory, max_length=max_length)
    ours32 = model.forward(texts)
    ours64 = load(directory, max_length=max_length, dtype="float64").forward(texts)
    if lowercases_first(directory):                                    # transformers' tokenizer does not: lowercased
        from tokenizers.normalizers import Lowercase                   # as e5np's tokenizer does it

        texts = [Lowercase().normalize_str(text) for text in texts]
    ref32 = transformers_forward(directory, texts, max_length=max_length, pooling=model.pooling)
    ref64 = transformers_forward(directory, texts, max_length=max_length, dtype="float64", pooling=model.pooling)
    if not np.array_equal(ours32.input_ids, ref32.input_ids):
        raise AssertionError("e5np and transformers tokenized the texts differently")
    real = ours32.attention_mask.astype(bool)

    def stages(forward, normalized):
        named = [("embeddings", forward.hidden_states[0][real])]
        named += [(f"layer {i}", h[real]) for i, h in enumerate(forward.hidden_states[1:], 1)]
        return named + [("pooled", forward.pooled), ("normalized", normalized)]

    ours32_stages, ours64_stages = (stages(f, l2_normalize(f.pooled)) for f in (ours32, ours64))  # (normalizing or not)
    ref32_stages, ref64_stages = (stages(f, f.embeddings) for f in (ref32, ref64))
    rows = []
    for (name, a32), (_, t32), (_, a64), (_, t64) in zip(ours32_stages, ref32_stages, ours64_stages, ref64_stages):
        max_abs, max_rel = compare(a32, t32)
        rows.append({"stage": name, "max_abs": max_abs, "max_rel": max_rel,
                     "e5np_vs_f64": compare(a32, a64)[0], "transformers_vs_f64": compare(t32, a64)[0],
                     "e5np_f64_vs_transformers_f64": compare(a64, t64)[0]})
    final = rows[-1]["max_abs"]
    return {
        "model": str(directory), "texts": len(texts), "tokens": int(real.sum()), "max_length": max_length,
        "versions": ref32.versions, "tolerance": tolerance, "normalized_max_abs": final,
        "passed": final <= tolerance, "rows": rows,
    }


def format_report(report):
    lines = [f"e5np parity: {report['model']}",
             f"{report['texts']} texts, {report['tokens']} real tokens, max_length {report['max_length']}; "
             f"transformers {report['versions']['transformers']}, torch {report['versions']['torch']}",
             "",
             f"{'stage':<12} {'max-abs':>10} {'max-rel':>10} {'e5np-f64':>10} {'hf-f64':>10} {'f64 vs f64':>11}",
             f"{'':<12} {'e5np-hf':>10} {'e5np-hf':>10} {'distance':>10} {'distance':>10} {'e5np-hf':>11}"]
    for r in report["rows"]:
        lines.append(f"{r['stage']:<12} {r['max_abs']:>10.2e} {r['max_rel']:>10.2e} {r['e5np_vs_f64']:>10.2e} "
                     f"{r['transformers_vs_f64']:>10.2e} {r['e5np_f64_vs_transformers_f64']:>11.2e}")
    verdict = "PASS" if report["passed"] else "FAIL"
    lines += ["", f"{verdict}: normalized embeddings max-abs {report['normalized_max_abs']:.2e} "
                  f"(tolerance {report['tolerance']:.0e})",
              "columns: e5np-f32 vs transformers-f32; each float32 engine's distance from float64 truth "
              "(e5np-f64); e5np-f64 vs transformers-f64. Hidden states compare real tokens only."]
    return "\n".join(lines)
