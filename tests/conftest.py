import json
import math
import os

import numpy as np
import pytest

import e5np
from tests.checkpoints import FIXTURES, REFERENCES, TINY_DIR, make_e5_shaped, minilm_dir

CHECKPOINTS = ["tiny", "minilm", "e5-shaped", "bert-wide", "xlmr"]  # mean-pooled, L2-normalized, as E5


def pytest_configure(config):
    config.addinivalue_line("markers", "live: runs torch/transformers live (the second tier)")


def pytest_collection_modifyitems(config, items):
    """The live tier skips without torch, unless E5NP_REQUIRE_LIVE=1 (CI), where a skip would hide it."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        return
    except ImportError as e:
        if os.environ.get("E5NP_REQUIRE_LIVE") == "1":
            raise pytest.UsageError(f"E5NP_REQUIRE_LIVE=1 but the live tier cannot run: {e}")
        reason = f"live tier needs torch and transformers ({e})"
    for item in items:
        if "live" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def load_reference(name):
    with np.load(REFERENCES / f"{name}.npz") as f:
        ref = dict(f)
    ref["texts"] = json.loads(ref["texts"].tobytes().decode("utf-8"))
    ref["versions"] = json.loads(ref["versions"].tobytes().decode("utf-8"))
    return ref


EXPONENTIALS = {"exp2": (np.exp2, math.log2(math.e)), "exp": (np.exp, 1.0)}  # as e5np.numerics writes them


@pytest.fixture(params=sorted(EXPONENTIALS))
def exponential(request, monkeypatch):
    """Each of the exponentials the engine may take (e5np.numerics.EXP: exp2 on CPUs where NumPy vectorizes it, exp
    elsewhere), whichever this CPU gets: the name, with numerics.EXP and numerics.EXP_UNITS set to it for the test."""
    from e5np import numerics

    EXP, EXP_UNITS = EXPONENTIALS[request.param]
    monkeypatch.setattr(numerics, "EXP", EXP)
    monkeypatch.setattr(numerics, "EXP_UNITS", EXP_UNITS)
    return request.param


@pytest.fixture(scope="session")
def e5_shaped_dir(tmp_path_factory):
    directory, digest = make_e5_shaped(tmp_path_factory.mktemp("e5-shaped") / "e5-small")
    expected = load_reference("e5-shaped")["versions"]["weights_sha256"]
    assert digest == expected, "the e5-shaped weights changed; rerun tools/make_references.py e5-shaped"
    return directory


@pytest.fixture(scope="session")
def checkpoint_dirs(e5_shaped_dir):
    return {"tiny": TINY_DIR, "minilm": minilm_dir(), "e5-shaped": e5_shaped_dir,
            **{name: FIXTURES / name for name in ("bert-wide", "st-cls", "xlmr")}}


_models = {}


@pytest.fixture(scope="session")
def load_model(checkpoint_dirs):
    """load_model(name, dtype="float32") -> e5np.Model, loaded once per session."""

    def load(name, dtype="float32"):
        if (name, dtype) not in _models:
            _models[name, dtype] = e5np.load(checkpoint_dirs[name], dtype=dtype)
        return _models[name, dtype]

    return load


@pytest.fixture(scope="session")
def minilm(load_model):
    return load_model("minilm")
