"""Embed a Ray Data dataset across a cluster: each actor loads the model once and embeds batch after batch.

    import ray.data
    import e5np.ray

    docs = ray.data.read_parquet("s3://bucket/docs/")                     # a column "text", and any others
    embedded = e5np.ray.embed(docs, model="intfloat/e5-small", column="text", kind="passage")
    embedded.write_parquet("s3://bucket/embedded/")                      # the columns, plus "embedding"

`Embedder` is the callable class for `Dataset.map_batches`; `embed` sizes the actor pool and calls it. Needs the
extra: pip install "e5np[ray]".
"""

from .formats import FormatError
from .options import check_positive_int

BATCH_ROWS = 1024  # rows Ray hands an actor at a time: many of the model's batches, a few MB of Arrow data


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError('e5np.ray needs Ray Data: pip install "e5np[ray]"') from None
    return ray


def as_list(values):
    """A column of any batch format (pyarrow, pandas, NumPy) as a Python list."""
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values.tolist())


def texts_of(batch, column, names):
    """A batch's text column as a list of str; ValueError naming the column, the row in the batch and the row's first
    other values (its id, say) for the first value that is not a string (a null, a number): "None" or "3.0" would be
    embedded as if they were text."""
    if column not in names:
        raise KeyError(f"no column {column!r} in the batch; its columns are {', '.join(map(str, names))}")
    texts = as_list(batch[column])
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            kind = "null" if text is None else type(text).__name__
            others = ", ".join(f"{name}={as_list(batch[name])[row]!r:.40}" for name in names if name != column)
            raise ValueError(f"column {column!r}, row {row} of a batch ({others or 'no other columns'}): {kind} "
                             "where a text was expected")
    return texts


class Embedder:
    """For `Dataset.map_batches(Embedder, fn_constructor_kwargs={...})`: loads the model once per actor, and for each
    batch embeds `column` (with the model's prefix for `kind`: "query", "passage"/"document", or None for the texts
    as they are) and adds the vectors as `output_column`, every other column carried through.

    Batches may come as pyarrow Tables (the vectors a fixed_size_list<float32, H> column: what LanceDB and DuckDB's
    FLOAT[H] read), pandas DataFrames (a column of arrays) or dicts of NumPy arrays (an [n, H] array).
    threads: the actor's workers (default: its CPU budget, which Ray gives in OMP_NUM_THREADS).
    load_options: further arguments to e5np.load (max_length, dtype, ...).
    """

    def __init__(self, model, column="text", kind="passage", output_column="embedding", *, batch_size=32,
                 threads=None, normalize=None, truncation="warn", load_options=None):
        import e5np

        self.model = e5np.load(model, threads=threads, **(load_options or {}))
        self.model.prefix(kind)                                        # a bad kind stops the actor's start
        self.column, self.kind, self.output_column = column, kind, output_column
        self.options = {"batch_size": batch_size, "normalize": normalize, "truncation": truncation}

    def embed(self, texts):
        return self.model.embed(texts, kind=self.kind, **self.options).vectors     # [n, H]

    def __call__(self, batch):
        if isinstance(batch, dict):                                    # batch_format="numpy"
            vectors = self.embed(texts_of(batch, self.column, list(batch)))
            return {**batch, self.output_column: vectors}
        if hasattr(batch, "schema") and hasattr(batch, "append_column"):   # a pyarrow Table
            from .arrow import vector_column

            column = vector_column(self.embed(texts_of(batch, self.column, batch.column_names)))
            if self.output_column in batch.column_names:               # embedded before: replaced, as .jsonl does
                batch = batch.drop_columns([self.output_column])
            return batch.append_column(self.output_column, column)
        if hasattr(batch, "columns") and hasattr(batch, "assign"):         # a pandas DataFrame
            vectors = self.embed(texts_of(batch, self.column, list(batch.columns)))
            return batch.assign(**{self.output_column: list(vectors)})
        raise TypeError(f"Embedder takes pyarrow, pandas or numpy batches, got {type(batch).__name__}")


def actor_pool(ray, actors):
    """map_batches' arguments for a fixed pool of `actors` actors. Ray 2.51 and later take
    compute=ActorPoolStrategy(size=n) (concurrency=n is deprecated there); before, concurrency=n (and compute was the
    deprecated one)."""
    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    if version >= (2, 51):
        return {"compute": ray.data.ActorPoolStrategy(size=actors)}
    return {"concurrency": actors}


def embed(dataset, model="intfloat/e5-small", column="text", kind="passage", output_column="embedding", *,
          actors=None, cpus_per_actor=1, batch_rows=BATCH_ROWS, **options):
    """dataset with its `column` embedded into `output_column` (a fixed_size_list<float32, H>), by a pool of actors
    each loading `model` once: a lazy Dataset, run when it is written or consumed.

    actors: how many (default: the cluster's CPUs // cpus_per_actor, at least 1; Ray is started or joined, as
    ray.init() does, to count them); each runs cpus_per_actor workers (see actor_slots for what it asks Ray for). model: a hub id, or a directory that every
    node has at the same path. options: the rest of Embedder's (batch_size, threads, normalize, truncation, load_options).
    """
    ray = import_ray()
    cpus_per_actor = check_positive_int("cpus_per_actor", cpus_per_actor)
    batch_rows = check_positive_int("batch_rows", batch_rows)
    if not ray.is_initialized():                                       # as Ray Data would when the job runs
        ray.init()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = max(1, cpus // cpus_per_actor) if actors is None else check_positive_int("actors", actors)
    options.setdefault("threads", cpus_per_actor)
    return dataset.map_batches(Embedder, fn_constructor_kwargs={"model": model, "column": column, "kind": kind,
                                                                "output_column": output_column, **options},
                               batch_format="pyarrow", batch_size=batch_rows,
                               num_cpus=actor_slots(cpus, actors, cpus_per_actor), **actor_pool(ray, actors))


def actor_slots(cpus, actors, cpus_per_actor):
    """The logical CPUs each actor asks Ray for. Ray Data runs its read and write tasks on logical CPU slots too,
    and a pool of actors holding every slot leaves none for them: the job waits forever (ray-project/ray#44687).
    So the pool leaves one slot free, each actor asking for a share of the rest (it still runs cpus_per_actor
    workers: the slots are Ray's bookkeeping, the threads are what keep the cores busy)."""
    return min(float(cpus_per_actor), max(0.05, (cpus - 1) / actors))


def read(ray, path):
    """A Dataset of the file, directory or glob at path, by its format: Parquet (.parquet, or a directory of
    Parquet files), JSON lines (.jsonl), or text lines (.txt: one text a line, in a column "text"). Local Parquet
    files are checked first, so that a damaged one is named (Ray's reader says only that some footer is wrong)."""
    name = str(path).rstrip("/")
    if name.endswith(".jsonl"):
        return ray.data.read_json(name)
    if name.endswith(".txt"):
        return ray.data.read_text(name)
    check_parquet_files(name)
    return ray.data.read_parquet(name)


def check_parquet_files(name):
    """FormatError (a ValueError) naming the first local Parquet file (name: a file, a directory of them, or a glob) whose footer
    cannot be read; nothing for a remote path (s3://...), which Ray reads as it comes."""
    import glob
    import os

    import pyarrow.parquet as pq

    if "://" in name:
        return
    files = sorted(glob.glob(os.path.join(name, "**", "*.parquet"), recursive=True)) if os.path.isdir(name) \
        else sorted(glob.glob(name))
    for file in files:
        try:
            pq.read_metadata(file)
        except Exception as e:                                         # pyarrow's ArrowInvalid, OSError
            raise FormatError(f"{file}: not a Parquet file ({e})") from None


def run_job(input_path, output_dir, model, *, column="text", kind=None, address=None, **options):
    """The job `e5np embed --ray` runs: input_path read as a Dataset (see read), embedded by `embed`, written to
    output_dir as Parquet files (every input column, plus "embedding"). address: a Ray cluster's ("auto", or
    "ray://host:10001"); None joins RAY_ADDRESS's, or starts a local one. Returns the rows written."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address)
    dataset = embed(read(ray, input_path), model=model, column=column, kind=kind, **options)
    dataset.write_parquet(str(output_dir))
    return parquet_rows(output_dir)


def parquet_rows(directory):
    """The rows the Parquet files in directory hold, from their footers."""
    import pyarrow.parquet as pq
    from pathlib import Path

    return sum(pq.read_metadata(path).num_rows for path in Path(directory).glob("*.parquet"))
