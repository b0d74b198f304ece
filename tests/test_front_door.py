"""What a new user meets first: the command line's errors for a model it cannot find, a bad port, a typo'd flag,
two sources of texts at once; `--version`. Each runs `python -m e5np` in a subprocess, as a user would."""

import importlib.util
import os
import subprocess
import sys

import pytest

import e5np
from tests.checkpoints import TINY_DIR


def e5np_cli(*args, env=None, stdin=""):
    environment = {k: v for k, v in os.environ.items() if k != "E5NP_MODEL"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "e5np", *map(str, args)], input=stdin, env=environment,
                          capture_output=True, text=True, timeout=120)


def one_line_error(result, *words):
    """Exit status 2 and one line on stderr holding every word, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, f"{word!r} not in: {result.stderr}"


def test_version():
    result = e5np_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"e5np {e5np.__version__}"


def test_an_uncached_model_names_todays_download_command_and_how_to_pass_a_directory(tmp_path):
    """huggingface-hub 2 has no `huggingface-cli`: the message names `hf download`, and --model DIR / E5NP_MODEL."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HOME": str(tmp_path / "home")}
    result = e5np_cli("embed", "hello", env=env)
    one_line_error(result, "intfloat/e5-small is not in the Hugging Face cache", "`hf download intfloat/e5-small`",
                   "--model DIR", "E5NP_MODEL")
    assert "huggingface-cli" not in result.stderr


def test_an_uncached_revision_is_in_the_download_command(tmp_path):
    with pytest.raises(e5np.ModelNotFoundError, match=r"`hf download intfloat/e5-small --revision v9` fills"):
        e5np.load("intfloat/e5-small", revision="v9", local_files_only=True, cache_dir=tmp_path / "empty")


NEEDS_SERVE = pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None,
                                 reason='serve says first that it needs its extra: pip install "e5np[serve]"')


@pytest.mark.parametrize("command", [["embed", "hello"], ["similarity", "a", "b"],
                                     pytest.param(["serve"], marks=NEEDS_SERVE),
                                     ["search", "build", "CORPUS", "INDEX"]])
def test_a_bad_e5np_model_says_it_came_from_e5np_model(command, tmp_path):
    (tmp_path / "CORPUS").write_text("a passage\n")
    missing = tmp_path / "no-such-model"
    result = subprocess.run([sys.executable, "-m", "e5np", *command], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, E5NP_MODEL=str(missing)), timeout=120)
    one_line_error(result, str(missing), "no such directory", "E5NP_MODEL environment variable")
    assert not (tmp_path / "INDEX").exists()


def test_a_bad_model_given_with_model_does_not_blame_e5np_model(tmp_path):
    missing = str(tmp_path / "no-such-model")
    result = e5np_cli("embed", "--model", missing, "hello", env={"E5NP_MODEL": missing})
    one_line_error(result, missing, "no such directory")
    assert "E5NP_MODEL" not in result.stderr


def test_a_directory_with_no_checkpoint_says_so(tmp_path):
    for directory in ("/", tmp_path):
        result = e5np_cli("embed", "--model", directory, "hello")
        one_line_error(result, f"{directory} holds no checkpoint (no config.json, no model.safetensors)")
    with pytest.raises(e5np.CheckpointError, match="holds no checkpoint"):
        e5np.load(tmp_path)


@pytest.mark.parametrize("port", [99999, 65536, -1])
def test_serve_refuses_a_port_out_of_range_in_one_line(port):
    result = e5np_cli("serve", "--model", TINY_DIR, "--port", port)
    one_line_error(result, "--port must be 0..65535", f"got {port}")


@pytest.mark.parametrize("command", [["embed"], ["search", "query", "INDEX"]])
def test_texts_as_arguments_and_input_are_refused_together(command, tmp_path):
    """Before, the arguments won and the file was dropped without a word."""
    (tmp_path / "f.txt").write_text("from the file\n")
    result = e5np_cli(*command, "--model", TINY_DIR, "--input", tmp_path / "f.txt", "an argument",
                      "-o" if command == ["embed"] else "--json", *([tmp_path / "out.npy"] if command == ["embed"]
                                                                    else []))
    one_line_error(result, "as arguments and --input", "give one or the other")
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("command, prog, typo", [
    (["embed", "--quary", "x"], "e5np embed", "--quary"),
    (["search", "query", "INDEX", "--quary", "x"], "e5np search query", "--quary"),
    (["search", "build", "--quary", "CORPUS", "INDEX"], "e5np search build", "--quary"),
    (["similarity", "a", "b", "c"], "e5np similarity", "c"),
    (["serve", "--prot", "80"], "e5np serve", "--prot"),
    (["parity", "--tolerence", "1"], "e5np parity", "--tolerence"),
])
def test_a_typo_prints_the_commands_usage_and_the_error(command, prog, typo):
    """argparse passed a command's unrecognized arguments up to `e5np`, which printed its own usage instead."""
    result = e5np_cli(*command)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"usage: {prog} "), result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"{prog}: error: unrecognized arguments: {typo}")
