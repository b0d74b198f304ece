"""What the tests of e5np.integrations share: the frameworks (skipped where absent, unless CI says they must be
there) and checkpoints whose query and passage prefixes differ, so that a swapped prefix changes the vectors."""

import os
import shutil

import pytest

from tests.checkpoints import SEARCH_PROMPTS, TINY_DIR, minilm_dir, with_prompts

# A few documents and the queries that each should find, for retrieval with the real MiniLM weights.
DOCUMENTS = {
    "paris": "Paris is the capital and largest city of France, on the Seine.",
    "protein": "Adult women need about 46 grams of protein a day, more when pregnant.",
    "python": "Python is a programming language that lets you work quickly.",
    "everest": "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
}
QUERIES = {"what is the capital of France?": "paris", "how much protein should a woman eat": "protein",
           "tallest mountain in the world": "everest"}


def framework(module):
    """importorskip(module), except with E5NP_REQUIRE_INTEGRATIONS=1 (CI's main pass), where a skip would hide it."""
    if os.environ.get("E5NP_REQUIRE_INTEGRATIONS") == "1":
        return __import__(module, fromlist=["_"])
    return pytest.importorskip(module, reason=f"needs {module} (pip install -e \".[langchain,llama-index,chroma]\")")


@pytest.fixture(scope="session")
def prompted_dir(tmp_path_factory):
    """The tiny BERT declaring prompts: query "search_query: ", passage (document) "search_document: ", and
    "search_query: " as its default prompt (what plain encode() adds), which the adapters must not add to passages."""
    return with_prompts(TINY_DIR, tmp_path_factory.mktemp("prompted") / "tiny-prompted", SEARCH_PROMPTS)


@pytest.fixture(scope="session")
def e5_named_dir(tmp_path_factory):
    """The tiny BERT in a directory named as an E5: e5np gives it "query: " / "passage: "."""
    directory = tmp_path_factory.mktemp("e5-named") / "tiny-e5"
    shutil.copytree(TINY_DIR, directory)
    return directory


@pytest.fixture(scope="session")
def e5_minilm_dir(tmp_path_factory):
    """The real all-MiniLM-L6-v2 weights behind a link named e5-small: real retrieval, with E5's prefixes."""
    link = tmp_path_factory.mktemp("e5-minilm") / "e5-small"
    link.symlink_to(minilm_dir(), target_is_directory=True)
    return link
