"""e5np.Index from Python: build (from texts, records, pairs), query, append, resume after an interruption,
rebuild beside a queryable index, damaged directories, the lock; and the CLI's search commands giving what it gives."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import e5np
from e5np import formats
from tests.checkpoints import TINY_DIR
from tests.row_independence import BLAS_ROWS_INDEPENDENT, PARITY_BAR, assert_same_vectors

CORPUS = ["The Eiffel Tower is in Paris.", "Pandas eat bamboo.", "Python is a programming language.",
          "Paris is the capital of France.", "the cat sat on the mat", "Pandas eat bamboo."]
QUERIES = ["what do pandas eat?", "where is the eiffel tower?", "a cat"]
MANY = [f"passage {i} is about topic {i % 13}" for i in range(2100)]       # two chunks of formats.CHUNK


@pytest.fixture(scope="module")
def tiny():
    return e5np.load(TINY_DIR)


def unit(vectors):
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def brute_force(model, passages, queries, k):
    """(indices, scores) of the k best passages per query: every score, sorted, equal scores by corpus order."""
    scores = unit(model.encode_queries(queries)) @ unit(model.encode_passages(passages)).T
    order = np.array([sorted(range(len(passages)), key=lambda i: (-row[i], i))[:k] for row in scores])
    return order, np.take_along_axis(scores, order, axis=1)


def interrupted_after(passages, n):
    """The passages, then KeyboardInterrupt where passage n would come (a Ctrl-C mid-build)."""
    yield from passages[:n]
    raise KeyboardInterrupt


def test_build_from_texts_and_query_equal_brute_force(tiny, tmp_path):
    index = e5np.Index.build(tmp_path / "index", CORPUS, tiny)
    assert (len(index), index.dim, index.complete, index.field) == (len(CORPUS), tiny.dim, True, None)
    assert index.model_name == str(TINY_DIR) and index.meta["rows"] == len(CORPUS)
    assert index.built == e5np.index.Built(rows=6, added=6, start=0, replaced=False)
    hits = index.query(QUERIES, top_k=4)
    order, scores = brute_force(tiny, CORPUS, QUERIES, 4)
    assert [[hit["index"] for hit in found] for found in hits] == order.tolist()
    np.testing.assert_allclose([[hit["score"] for hit in found] for found in hits], scores, rtol=0, atol=1e-6)
    assert [list(hit) for hit in hits[0]] == [["rank", "index", "score", "text"]] * 4
    assert [hit["rank"] for hit in hits[0]] == [1, 2, 3, 4]
    assert all(hit["text"] == CORPUS[hit["index"]] for found in hits for hit in found)
    one = index.query(QUERIES[0], top_k=4)                             # a str: one list of hits
    assert index.search(tiny.encode_queries(QUERIES[0]), top_k=4) == one
    # A query alone is a one-row product, which NumPy hands to BLAS's matrix-vector kernel: that sums in another
    # order than a product of several queries (by ~6e-8 on a score, NumPy 1.24 and 2.4 on AVX-512 alike), and is
    # kept: for one query over many vectors it is several times faster than a product of two rows.
    assert [hit["text"] for hit in one] == [hit["text"] for hit in hits[0]]
    np.testing.assert_allclose([hit["score"] for hit in one], [hit["score"] for hit in hits[0]], rtol=0,
                               atol=PARITY_BAR)
    pair = index.query(QUERIES[:2], top_k=4)
    pandas = [hit["index"] for hit in index.query("Pandas eat bamboo.", top_k=2)]
    if BLAS_ROWS_INDEPENDENT:                                          # a query among others scores as among any
        assert pair[0] == hits[0]
        assert pandas == [1, 5]                                        # duplicate passages: in corpus order
    else:                                # batch-mates move a vector by ~1e-7: duplicates may swap, scores agree
        assert sorted(pandas) == [1, 5]
        assert [hit["text"] for hit in pair[0]] == [hit["text"] for hit in hits[0]]
        np.testing.assert_allclose([hit["score"] for hit in pair[0]], [hit["score"] for hit in hits[0]], rtol=0,
                                   atol=PARITY_BAR)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        index.query("q", top_k=0)
    index.close()


def test_build_from_records_and_pairs(tiny, tmp_path):
    records = [{"id": i, "body": text} for i, text in enumerate(CORPUS)]
    with e5np.Index.build(tmp_path / "records", records, str(TINY_DIR), field="body") as index:
        assert index.field == "body"
        hits = index.query("what do pandas eat?", top_k=2)
        assert [hit["record"] for hit in hits] == [records[hit["index"]] for hit in hits]
        assert [hit["text"] for hit in hits] == [CORPUS[hit["index"]] for hit in hits]
    stored = [json.loads(line) for line in (tmp_path / "records" / "passages.jsonl").read_text().splitlines()]
    assert stored == records
    np.testing.assert_allclose(np.load(tmp_path / "records" / "vectors.npy"), unit(tiny.encode_passages(CORPUS)),
                               atol=1e-7)
    pairs = [(record["body"], record) for record in records]
    with e5np.Index.build(tmp_path / "pairs", pairs, tiny, field="body") as index:
        hit = index.query("bamboo", top_k=1)[0]
        assert hit["index"] == brute_force(tiny, CORPUS, ["bamboo"], 1)[0][0, 0] and hit["record"] == records[hit["index"]]
    with pytest.raises(formats.FormatError, match="passage 2: expected a text"):
        e5np.Index.build(tmp_path / "mixed", ["a text", {"text": "a record"}], tiny)
    with pytest.raises(TypeError, match="not one str"):
        e5np.Index.build(tmp_path / "str", "a text", tiny)


def test_append(tiny, tmp_path):
    distinct = CORPUS[:5] + ["Bananas are yellow."]                   # (no duplicates: batch-mates move them ~1e-7)
    e5np.Index.build(tmp_path / "index", distinct[:4], tiny).close()
    with e5np.Index.build(tmp_path / "index", distinct[4:], append=True) as index:   # the index's model
        assert index.built == e5np.index.Built(rows=6, added=2, start=4, replaced=False)
        assert len(index) == 6 and index.meta["build_start"] == 4
        order, _ = brute_force(tiny, distinct, QUERIES, 6)
        assert [[hit["index"] for hit in found] for found in index.query(QUERIES, top_k=6)] == order.tolist()
    with pytest.raises(e5np.IndexStateError, match="no index to append to"):
        e5np.Index.build(tmp_path / "nowhere", CORPUS, tiny, append=True)
    with pytest.raises(e5np.IndexStateError, match="built from lines of plain text: append to it with a corpus"):
        e5np.Index.build(tmp_path / "index", [{"text": "a record"}], tiny, append=True)


def test_resume_after_an_interruption(tiny, tmp_path):
    straight = e5np.Index.build(tmp_path / "straight", MANY, tiny)
    straight.close()
    index = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt) as stopped:
        e5np.Index.build(index, interrupted_after(MANY, 2060), tiny)
    assert stopped.value.index_state == (f"{index} holds an unfinished index of the first 2048 passages; `e5np search "
                                         f"build --resume CORPUS {index}` continues it")
    with e5np.Index.open(index) as unfinished:
        assert (unfinished.complete, len(unfinished)) == (False, 2048)
        assert unfinished.notices == [f"{index} is unfinished: it holds the first 2048 passages of its corpus (`e5np "
                                      f"search build --resume CORPUS {index}` continues it)"]
        with pytest.warns(e5np.IndexWarning, match="is unfinished"):
            hits = unfinished.query("topic 3", top_k=3000)
        assert sorted(hit["text"] for hit in hits) == sorted(MANY[:2048])
    with pytest.raises(e5np.IndexStateError, match="holds an unfinished build"):
        e5np.Index.build(index, MANY, tiny)                            # never thrown away unasked
    with pytest.raises(e5np.IndexStateError, match="the passages given: text 8 is not passage 8"):
        e5np.Index.build(index, MANY[:7] + ["another"] + MANY[8:], resume=True)
    with e5np.Index.build(index, MANY, resume=True) as resumed:
        assert resumed.complete and resumed.built == e5np.index.Built(rows=2100, added=2100, start=0, replaced=False)
    for name in ("passages.jsonl", "index.json"):
        assert (index / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert_same_vectors(np.load(index / "vectors.npy"), np.load(tmp_path / "straight" / "vectors.npy"))


def test_a_rebuild_leaves_the_old_index_queryable_until_complete(tiny, tmp_path):
    index = tmp_path / "index"
    e5np.Index.build(index, CORPUS, tiny).close()
    seen = []

    def new_passages(stop):
        for i, text in enumerate(MANY):
            if i == 2050:                                              # the first chunk of the rebuild is written
                with e5np.Index.open(index) as old, warnings.catch_warnings():
                    warnings.simplefilter("ignore", e5np.IndexWarning)
                    seen.append(sorted(hit["text"] for hit in old.query("bamboo", top_k=100)))
                if stop:
                    raise KeyboardInterrupt
            yield text
    with pytest.raises(KeyboardInterrupt) as stopped:
        e5np.Index.build(index, new_passages(stop=True), tiny)
    assert stopped.value.index_state.startswith(f"{index} is as it was; {index / '.rebuild'} holds its unfinished "
                                                "rebuild, the first 2048 passages")
    assert seen == [sorted(CORPUS)]
    with e5np.Index.open(index) as old:
        assert len(old) == len(CORPUS)
        assert old.notices == [f"{index / '.rebuild'} holds an unfinished rebuild of {index}: these results are "
                               "from the index as it was"]
        with pytest.warns(e5np.IndexWarning, match="unfinished rebuild"):
            old.query("bamboo")
    with e5np.Index.build(index, new_passages(stop=False), resume=True) as rebuilt:
        assert rebuilt.built == e5np.index.Built(rows=2100, added=2100, start=0, replaced=True)
        assert len(rebuilt) == len(MANY) and rebuilt.notices == []
    assert seen[1] == sorted(CORPUS)                                   # still the old one while it resumed
    assert sorted(p.name for p in index.iterdir()) == [".lock", "index.json", "passages.jsonl", "vectors.npy"]


def test_open_names_the_damaged_file(tiny, tmp_path):
    index = tmp_path / "index"
    e5np.Index.build(index, CORPUS, tiny).close()
    (index / "index.json").write_text("{not json")
    with pytest.raises(e5np.IndexFormatError, match=f"{index / 'index.json'}: not valid JSON"):
        e5np.Index.open(index)
    (index / "index.json").unlink()
    with pytest.raises(e5np.IndexFormatError, match=f"{index / 'index.json'}: not found"):
        e5np.Index.open(index)
    with pytest.raises(e5np.IndexFormatError, match="not found"):
        e5np.Index.open(tmp_path / "nowhere")
    e5np.Index.build(tmp_path / "other", CORPUS, tiny).close()
    (tmp_path / "other" / "passages.jsonl").write_text('{"text": "one"}\nnot json\n')
    with e5np.Index.open(tmp_path / "other") as damaged:
        with pytest.raises(e5np.IndexFormatError, match=f"{tmp_path / 'other' / 'passages.jsonl'}:2: not a passage"):
            damaged.query("q", top_k=6)


HOLD_THE_LOCK = """
import sys, time
from e5np.runtime import lock_directory
lock_directory(sys.argv[1])
print("locked", flush=True)
time.sleep(300)
"""


def test_a_second_builder_is_refused_while_a_process_holds_the_lock(tiny, tmp_path):
    index = tmp_path / "index"
    e5np.Index.build(index, CORPUS, tiny).close()
    before = {name: (index / name).read_bytes() for name in ("vectors.npy", "passages.jsonl", "index.json")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(index)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        for options in ({}, {"append": True}):
            with pytest.raises(e5np.IndexLockedError, match="is being built by another `e5np search build`"):
                e5np.Index.build(index, CORPUS, tiny, **options)
    finally:
        holder.kill()
        holder.wait()
    assert {name: (index / name).read_bytes() for name in before} == before


def cli(*args):
    return subprocess.run([sys.executable, "-m", "e5np", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_the_cli_gives_what_the_api_gives(tiny, tmp_path):
    records = tmp_path / "docs.jsonl"
    records.write_text("".join(json.dumps({"id": i, "body": text}) + "\n" for i, text in enumerate(CORPUS)))
    built = cli("search", "build", records, tmp_path / "cli", "--field", "body", "-m", TINY_DIR, "-q")
    assert built.returncode == 0, built.stderr
    e5np.Index.build(tmp_path / "api", formats.Input(records, field="body"), tiny).close()
    for name in ("passages.jsonl", "index.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name
    assert_same_vectors(np.load(tmp_path / "cli" / "vectors.npy"), np.load(tmp_path / "api" / "vectors.npy"))
    queried = cli("search", "query", tmp_path / "api", *QUERIES, "-k", "3", "--json")
    assert queried.returncode == 0 and queried.stderr == "", queried.stderr
    with e5np.Index.open(tmp_path / "cli") as index:
        expected = [{"query": q, "results": hits} for q, hits in zip(QUERIES, index.query(QUERIES, top_k=3))]
    assert json.loads(queried.stdout) == json.loads(json.dumps(expected))


def test_a_query_with_another_recipe_warns(tiny, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(TINY_DIR, model)
    with e5np.Index.build(tmp_path / "index", CORPUS, str(model)) as index:
        with warnings.catch_warnings():
            warnings.simplefilter("error")                             # the same model: nothing to say
            index.query("bamboo")
    settings = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 64}))
    with e5np.Index.open(tmp_path / "index") as index:
        with pytest.warns(e5np.ModelMismatchWarning, match=r"now embeds texts otherwise .* \(max_length 128 then, "
                                                           r"64 now\)"):
            index.query("bamboo")
        with pytest.raises(e5np.IndexStateError, match="makes 48-dim vectors but the index holds 32-dim ones"):
            index.query("bamboo", model=str(TINY_DIR.parent / "bert-wide"))
