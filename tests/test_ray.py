"""e5np on a real Ray cluster (a local one of 2 CPUs): Ray Data reads Parquet, e5np.ray's actors embed, and the
vectors are the ones model.encode_passages gives, every row once, whatever the batches and the actors."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integrations_support import framework  # noqa: E402

ray = framework("ray")
pa = framework("pyarrow")
pq = framework("pyarrow.parquet")

import e5np  # noqa: E402
import e5np.ray  # noqa: E402
from tests.checkpoints import TINY_DIR, minilm_dir, with_prompts  # noqa: E402

# The AVX2-kernel pass of CI leaves these out: they test Ray's plumbing, not the model's numbers.
pytestmark = pytest.mark.skipif(os.environ.get("E5NP_SKIP_RAY") == "1", reason="E5NP_SKIP_RAY=1")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def passages(n, seed=0):
    rng = np.random.default_rng(seed)
    words = "river bank money stream loan water fish interest current account deposit flow".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(n)]


def write_dataset(directory, texts, files=3):
    """texts as `files` Parquet files with an id column and a source column, ids counting up across the files."""
    directory.mkdir()
    bounds = np.linspace(0, len(texts), files + 1).astype(int)
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        table = pa.table({"id": np.arange(start, stop), "text": texts[start:stop],
                          "source": [f"file{k}"] * (stop - start)})
        pq.write_table(table, directory / f"part-{k}.parquet", row_group_size=500)
    return directory


def test_a_parquet_dataset_embeds_as_encode_passages_does(cluster, tmp_path):
    texts = passages(5000)
    data = write_dataset(tmp_path / "in", texts)
    out = tmp_path / "out"
    embedded = e5np.ray.embed(ray.data.read_parquet(str(data)), model=str(minilm_dir()), column="text",
                              kind="passage", actors=2)
    embedded.write_parquet(str(out))
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert table.num_rows == 5000 and sorted(table.column("id").to_pylist()) == list(range(5000))
    rows = np.argsort(table.column("id").to_numpy())
    assert [table.column("text")[int(i)].as_py() for i in rows[:5]] == texts[:5]
    assert table.column("source")[int(rows[-1])].as_py() == "file2"
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))[rows]
    expected = e5np.load(minilm_dir()).encode_passages(texts)
    np.testing.assert_allclose(vectors, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch_format", ["pyarrow", "pandas", "numpy"])
def test_every_batch_format_carries_the_columns_and_prefixes_by_kind(cluster, tmp_path, batch_format):
    """A checkpoint whose prompts differ for queries and documents: a swapped prefix would fail."""
    model_dir = with_prompts(TINY_DIR, tmp_path / "prompted")
    model = e5np.load(model_dir)
    texts = passages(40, seed=1)
    dataset = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    for kind, expected in (("query", model.encode_queries(texts)), ("passage", model.encode_passages(texts))):
        rows = dataset.map_batches(e5np.ray.Embedder, fn_constructor_kwargs={"model": str(model_dir), "kind": kind},
                                   batch_format=batch_format, batch_size=16, **e5np.ray.actor_pool(ray, 1)).take_all()
        rows.sort(key=lambda row: row["id"])
        assert [row["text"] for row in rows] == texts
        np.testing.assert_allclose(np.stack([row["embedding"] for row in rows]), expected, atol=1e-6, rtol=0)


def test_an_actor_uses_the_cpus_ray_gave_it(cluster):
    """Ray gives an actor its CPU budget in OMP_NUM_THREADS; the model's default workers follow it."""
    @ray.remote(num_cpus=1)
    def threads():
        return e5np.load(TINY_DIR).threads
    assert ray.get(threads.remote()) == 1


def test_a_null_text_names_its_row_and_column(cluster):
    dataset = ray.data.from_items([{"id": 1, "text": "fine"}, {"id": 2, "text": None}, {"id": 3, "text": "ok"}])
    with pytest.raises(Exception, match=r"column .text., row 1 of a batch \(id=2\): null where a text was expected"):
        e5np.ray.embed(dataset, model=str(TINY_DIR), actors=1).take_all()


def test_a_missing_column_names_the_columns_there_are(cluster):
    dataset = ray.data.from_items([{"id": 1, "body": "a text"}])
    with pytest.raises(Exception, match=r"no column 'text' in the batch; its columns are id, body"):
        e5np.ray.embed(dataset, model=str(TINY_DIR), actors=1).take_all()


def test_a_corrupt_parquet_file_is_named(cluster, tmp_path):
    """Ray's own reader does not say which file (only that a footer is wrong): e5np.ray.read checks local ones."""
    data = write_dataset(tmp_path / "in", passages(30))
    (data / "part-1.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(ValueError, match=r"part-1\.parquet: not a Parquet file"):
        e5np.ray.read(ray, data)
    with pytest.raises(ValueError, match=r"part-1\.parquet: not a Parquet file"):
        e5np.ray.read(ray, str(data / "*.parquet"))


def embedder_actors():
    """The pids of the processes running an Embedder actor (Ray titles them "ray::MapWorker(MapBatches(Embedder))")."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"MapBatches(Embedder)" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:                                                # ended meanwhile
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actors' processes in /proc")
def test_a_killed_actor_is_replaced_and_every_row_comes_out_once(cluster, tmp_path):
    """SIGKILL one actor mid-job: Ray restarts it and retries its batches; the output holds every id once."""
    texts = passages(3000, seed=2)
    data = write_dataset(tmp_path / "in", texts, files=6)
    out = tmp_path / "out"
    dataset = e5np.ray.embed(ray.data.read_parquet(str(data)), model=str(minilm_dir()), actors=2, batch_rows=100)
    job = threading.Thread(target=lambda: dataset.write_parquet(str(out)))
    job.start()
    killed, deadline = None, time.monotonic() + 120
    while killed is None and job.is_alive() and time.monotonic() < deadline:
        alive = embedder_actors()
        if alive and any(out.glob("*.parquet")):                         # the job is under way
            killed = alive[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    job.join(timeout=300)
    assert killed is not None, "the job ended before an actor could be killed: make it longer"
    assert not job.is_alive()
    ids = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == list(range(3000))


def test_the_cli_runs_the_job_on_the_cluster(cluster, tmp_path, capsys):
    from e5np.cli import main

    texts = passages(300, seed=3)
    data = write_dataset(tmp_path / "in", texts)
    out = tmp_path / "out"
    assert main(["embed", "--ray", "-i", str(data), "-o", str(out), "--passage", "-m", str(TINY_DIR)]) == 0
    assert f"embedded 300 texts into {out}" in capsys.readouterr().err
    table = pq.read_table(out)
    rows = np.argsort(table.column("id").to_numpy())
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))[rows]
    np.testing.assert_allclose(vectors, e5np.load(TINY_DIR).encode_passages(texts), atol=1e-6, rtol=0)
    assert main(["embed", "--ray", "a text", "-o", str(tmp_path / "x")]) == 2
    assert "--ray reads --input" in capsys.readouterr().err
    (data / "part-2.parquet").write_bytes(b"PAR1 not parquet PAR1")
    assert main(["embed", "--ray", "-i", str(data), "-o", str(tmp_path / "y"), "-m", str(TINY_DIR)]) == 2
    assert "part-2.parquet: not a Parquet file" in capsys.readouterr().err
    pq.write_table(pa.table({"id": [1, 2], "text": ["fine", None]}), data / "part-2.parquet")
    assert main(["embed", "--ray", "-i", str(data), "-o", str(tmp_path / "z"), "-m", str(TINY_DIR)]) == 2
    err = capsys.readouterr().err
    assert "the Ray job failed: " in err and "null where a text was expected" in err and len(err.splitlines()) == 1
