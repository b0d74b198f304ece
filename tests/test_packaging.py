"""What pyproject.toml promises about the environment: the dependency floors are the versions CI tests."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject_floors():
    """{package: floor} of pyproject.toml's runtime dependencies ("numpy>=1.24" -> {"numpy": "1.24"})."""
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)[1]
    return dict(re.findall(r'^\s*"([\w.-]+)>=([\d.]+)"', block, re.M))


def test_ci_installs_each_dependency_at_its_floor():
    pins = dict(re.findall(r"^([\w.-]+)==([\d.]+)$", (ROOT / ".ci" / "oldest.txt").read_text(), re.M))
    floors = pyproject_floors()
    assert floors.keys() == {"numpy", "safetensors", "tokenizers", "huggingface-hub"}
    assert pins.keys() == floors.keys()
    for package, floor in floors.items():                             # floor 1.24: CI tests 1.24.0
        assert pins[package] in (floor, floor + ".0"), (package, floor, pins[package])
