"""The embeddings server: an ASGI application served by uvicorn, `pip install "e5np[serve]"`: the two embedding
routes plain ASGI, the others Starlette's.

Routes: OpenAI's POST /v1/embeddings, TEI's POST /embed, GET /health, GET /v1/models, GET /metrics (Prometheus).

Coalesced batching: every request's texts are tokenized on arrival and queued as one job; one batcher thread
takes whatever is waiting (first come, first served) up to a round's token budget (the model's max_batch_tokens),
and hands the round to one of the process's workers (runtime.workers(model.threads)), which runs it through
model.embed_tokens (length-sorted batches of the round's texts, from all its requests, on that worker's core) and
hands each vector back to its request. There is a round for each worker at most; a worker that finishes one
takes the next from whatever is waiting then, and while other rounds run a free worker waits until an eighth of a
round's budget, or half what the running rounds hold, is queued (or the others finish). When requests are still
arriving (read but not yet queued) a round waits for them at most batch_wait seconds (2 ms by default), and never
when none is.

Long texts: with chunking "mean" (a request's "chunking" field, or `--chunking mean` for requests that leave it out)
a text longer than the model's limit is queued as its windows, each a text of the queue, and its vector is their
token-weighted mean as encode(chunking="mean") makes it (e5np.chunking).

Backpressure: the queue holds at most max_queue_tokens tokens not yet taken by a round; a request that would pass
that bound gets 429 with Retry-After (an empty queue takes any request, however large, so that every request the
body and input limits admit can run). A client that hangs up has its texts not yet taken dropped from the queue.

Shutdown (SIGTERM, SIGINT): uvicorn stops accepting, lets the requests in flight finish (the batcher runs until
they have) for at most graceful_timeout seconds, then the process exits 0.

The request parsing and response building above make_app are plain functions, testable without uvicorn.
"""

import asyncio
import base64
import collections
import contextlib
import functools
import json
import math
import signal
import socket
import sys
import threading
import time

import numpy as np

from . import runtime
from .chunking import CHUNKINGS, check_chunk_pooling, check_chunking, combine_windows, model_splitter
from .prefixes import KINDS
from .tokenizer import encode_batch, lone_surrogate, overflowing

SERVE_EXTRA = 'e5np serve needs the serve extra: pip install "e5np[serve]"'
EMBEDDINGS, TEI_EMBED = "/v1/embeddings", "/embed"
ROUTES = {("POST", EMBEDDINGS), ("POST", TEI_EMBED), ("GET", "/health"), ("GET", "/v1/models"), ("GET", "/metrics")}


class RequestError(Exception):
    def __init__(self, status, message, param=None, kind="invalid_request_error", code=None, headers=None):
        super().__init__(message)
        self.status, self.param, self.kind, self.code, self.headers = status, param, kind, code, headers or {}


def openai_error_body(error):
    return {"error": {"message": str(error), "type": error.kind, "param": error.param, "code": error.code}}


def tei_error_body(error):
    kinds = {429: "overloaded", 500: "backend", 503: "unhealthy"}
    return {"error": str(error), "error_type": kinds.get(error.status, "validation")}


def load_json(body):
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:                                             # [[[[...]]]] deeper than Python's stack
        raise RequestError(400, "request body is nested too deeply to parse") from None


def check_texts(texts, field, max_inputs):
    """texts (a str or a non-empty list of str) as a list; RequestError naming field if it is not one."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise RequestError(400, f"'{field}' must be a string or a non-empty array of strings", param=field)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(400, f"'{field}[{i}]' must be a string, got {type(text).__name__} "
                                    "(token arrays are not supported)", param=field)
        if (where := lone_surrogate(text)) is not None:                # from a JSON escape such as "\ud800"
            raise RequestError(400, f"'{field}[{i}]' is not valid Unicode: a lone surrogate (U+{where[1]:04X}) at "
                                    f"offset {where[0]}", param=field)
    if len(texts) > max_inputs:
        raise RequestError(413, f"'{field}' has {len(texts)} items; the limit is {max_inputs}", param=field)
    return texts


def check_kind_field(value, field, allowed=("query", "passage", "document")):
    """A text kind for Model.prefix ("query", "passage"/"document"), or None for the texts as sent."""
    if value is None:
        return None
    if value not in allowed:
        raise RequestError(400, f"'{field}' must be one of {', '.join(map(repr, allowed))} or left out, got "
                                f"{value!r}", param=field)
    return KINDS[value]


def check_chunking_fields(request):
    """(chunking, chunk_overlap) as a request gives them, None where it leaves one out: chunking "mean" (a text
    longer than the model's limit embedded whole, as overlapping windows: encode(chunking="mean")) or "none" (cut
    at the limit); RequestError naming a field that is neither."""
    chunking, overlap = request.get("chunking"), request.get("chunk_overlap")
    if chunking is not None and chunking not in (*CHUNKINGS, "none"):
        raise RequestError(400, f"'chunking' must be 'mean', 'none' or left out, got {chunking!r}", param="chunking")
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1):
        raise RequestError(400, f"'chunk_overlap' must be a positive integer (tokens consecutive windows share), got "
                                f"{overlap!r}", param="chunk_overlap")
    return chunking, overlap


def request_texts(body, field, max_inputs):
    """(the JSON object of body, the texts of its field); RequestError if it is not one or has none."""
    request = load_json(body)
    if not isinstance(request, dict):
        raise RequestError(400, "request body must be a JSON object")
    if field not in request:
        raise RequestError(400, f"'{field}' is required", param=field)
    return request, check_texts(request[field], field, max_inputs)


def parse_request(body, max_inputs, dim):
    """An OpenAI embeddings request body for a model of dim-sized vectors -> (texts, encoding, model, kind,
    (chunking, chunk_overlap)), kind from input_type ("query", "passage" or "document": the model's prefix for it;
    None: the texts as sent, with the checkpoint's default prompt if it names one), chunking as
    check_chunking_fields gives it; RequestError if it is not one."""
    request, texts = request_texts(body, "input", max_inputs)
    encoding = request.get("encoding_format")
    encoding = "float" if encoding is None else encoding               # null, as some clients send it: the default
    if encoding not in ("float", "base64"):
        raise RequestError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    dimensions = request.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions != dim):
        raise RequestError(400, f"'dimensions' must be {dim}, the model's size, or left out: e5np does not shorten "
                                "vectors", param="dimensions")
    kind = check_kind_field(request.get("input_type"), "input_type")
    return texts, encoding, request.get("model"), kind, check_chunking_fields(request)


def parse_tei_request(body, max_inputs):
    """A TEI /embed request body -> (texts, normalize or None, truncate or None, kind, (chunking, chunk_overlap));
    RequestError if not one. prompt_name: "query", "passage" or "document" (the model's prompts of those names), or
    left out; chunking as check_chunking_fields gives it."""
    request, texts = request_texts(body, "inputs", max_inputs)
    flags = {}
    for name in ("normalize", "truncate"):
        value = request.get(name)
        if value is not None and not isinstance(value, bool):
            raise RequestError(400, f"'{name}' must be true or false", param=name)
        flags[name] = value
    kind = check_kind_field(request.get("prompt_name"), "prompt_name")
    return texts, flags["normalize"], flags["truncate"], kind, check_chunking_fields(request)


@functools.lru_cache(maxsize=8)
def _row_format(dim):
    return "[" + ",".join(["%.9g"] * dim) + "]"


def vector_rows_json(vectors):
    """Each row of vectors [n, H] as a JSON array. A float32 in 9 significant digits, the fewest that give every
    float32 back exactly: json.dumps writes the 17 digits of its float64 form, 1.6x the bytes in 3x the time, and
    that time is the event loop's, taken from every other request. float64 vectors, and non-finite values (only a
    broken checkpoint makes them), as json.dumps writes them."""
    if vectors.dtype != np.float32 or not np.isfinite(vectors).all():
        return [json.dumps(vector) for vector in vectors.tolist()]
    row = _row_format(vectors.shape[1])
    return [row % tuple(vector) for vector in vectors.tolist()]


def vectors_json(vectors):
    """vectors [n, H] as a JSON array of arrays (TEI's answer), as vector_rows_json writes them."""
    return "[" + ",".join(vector_rows_json(vectors)) + "]"


def embeddings_json(vectors, token_counts, encoding, model_name):
    """The OpenAI response, as JSON text, for vectors [n, H] embedded from token_counts [n] tokens."""
    if encoding == "base64":  # little-endian float32 bytes, as the OpenAI API returns
        embeddings = ['"' + base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") + '"'
                      for vector in vectors]
    else:
        embeddings = vector_rows_json(vectors)
    data = ",".join(f'{{"object":"embedding","index":{i},"embedding":{embedding}}}'
                    for i, embedding in enumerate(embeddings))
    tokens = int(np.sum(token_counts))
    return (f'{{"object":"list","data":[{data}],"model":{json.dumps(model_name)},'
            f'"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}')


def too_long_error(indices, max_length, field, hint):
    return RequestError(400, f"'{field}[{indices[0]}]' is longer than the model's limit of {max_length} tokens "
                             f"({len(indices)} input(s) are); {hint}", param=field)


def float_vectors_from_base64(items):
    """Decode base64 embeddings (for clients and tests)."""
    return np.stack([np.frombuffer(base64.b64decode(item), dtype="<f4") for item in items])


# --- the batcher ---------------------------------------------------------------------------------------


class Overloaded(Exception):
    """The queue has no room for a request's tokens."""


class Job:
    """One request's texts, as token ids, and where their vectors go."""

    def __init__(self, token_ids, normalize, dim, dtype, loop, future):
        self.token_ids, self.normalize = token_ids, normalize
        self.lengths = [len(ids) for ids in token_ids]
        self.tokens = sum(self.lengths)
        self.vectors = np.empty((len(token_ids), dim), dtype)
        self.taken = 0                    # texts handed to rounds so far
        self.done = 0                     # texts whose vectors are in
        self.dropped = False
        self.loop, self.future = loop, future

    def settle(self, result=None, error=None):
        def set_it():
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(set_it)
        except RuntimeError:                                           # the loop is closed: nobody is waiting
            pass


def tokens_of(pieces):
    """The tokens of a round's pieces (job, start, end)."""
    return sum(sum(job.lengths[start:end]) for job, start, end in pieces)


class Batcher:
    """One thread forming rounds of texts from every queued request, each round one model.embed_tokens call run on
    one of the process's workers (see the module's doc)."""

    def __init__(self, model, max_queue_tokens=32768, batch_wait=0.002, round_tokens=None, metrics=None):
        self.model, self.max_queue_tokens, self.batch_wait = model, max_queue_tokens, batch_wait
        self.round_tokens = round_tokens or model.max_batch_tokens
        self.metrics = metrics
        self.lock = threading.Condition()
        self.queue = collections.deque()
        self.queued_tokens = 0            # tokens queued and not yet taken by a round
        self.arriving = 0                 # requests being read or tokenized: they may join the next round
        self.tokens_per_second = None     # measured, for Retry-After
        self.stopping = False
        # A round for each worker at most: a worker that finishes one takes the next at once, from whatever is
        # waiting then (rounds do not wait for each other).
        self.slots = threading.Semaphore(model.threads)
        self.running = 0
        self.running_tokens = 0           # tokens of the rounds running
        self.thread = threading.Thread(target=self.run, name="e5np-batcher", daemon=True)
        self.thread.start()

    def arrival(self, delta):
        with self.lock:
            self.arriving += delta
            if delta < 0:
                self.lock.notify_all()

    def submit(self, job):
        with self.lock:
            if self.queued_tokens and self.queued_tokens + job.tokens > self.max_queue_tokens:
                raise Overloaded(self.retry_after())
            self.queue.append(job)
            self.queued_tokens += job.tokens
            self.gauges()
            self.lock.notify_all()

    def drop(self, job):
        """A request whose client left: its texts not yet taken leave the queue."""
        with self.lock:
            if not job.dropped and job.taken < len(job.token_ids):
                self.queued_tokens -= sum(job.lengths[job.taken:])
                job.taken = len(job.token_ids)
            if job in self.queue:                                      # a round may hold its other texts
                self.queue.remove(job)
            job.dropped = True
            self.gauges()
            self.lock.notify_all()

    def retry_after(self):
        """Seconds until the queue has drained, as measured, at least 1."""
        rate = self.tokens_per_second
        return max(1, math.ceil(self.queued_tokens / rate)) if rate else 1

    def gauges(self):
        if self.metrics:
            self.metrics["queue_tokens"].set(self.queued_tokens)
            self.metrics["queue_requests"].set(len(self.queue))

    def stop(self):
        """Embed what is queued, then stop."""
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        self.thread.join(timeout=60)
        with self.lock:
            while self.running:
                self.lock.wait(1)

    def take_round(self):
        """Pieces (job, start, end) of the waiting jobs, first come first served, up to the round's tokens (at
        least one text); None when stopping with nothing queued."""
        with self.lock:
            while True:
                while not self.stopping and not self.queue:
                    self.lock.wait()
                # While another round runs, a free worker waits for a round worth running or for the others to
                # finish: a round of a text or two costs several times more a text. Worth running is an eighth of
                # the budget, or half what the running rounds hold: clients that wait for their answers send no
                # more, so a few dozen of them never queue an eighth while a round holds the rest.
                while (self.running and self.queue and not self.stopping
                       and self.queued_tokens < min(self.round_tokens // 8, self.running_tokens // 2)):
                    self.lock.wait()
                if self.queue or self.stopping:
                    break
            if not self.queue:
                return None
            if self.batch_wait > 0:
                deadline = time.monotonic() + self.batch_wait
                while (self.arriving > 0 and self.queued_tokens < self.round_tokens and not self.stopping
                       and (left := deadline - time.monotonic()) > 0):
                    self.lock.wait(left)
            # Like length_batches' budget: a share of what waits for each worker (one large request runs on every
            # core), not under an eighth of the full budget.
            threads = self.model.threads
            budget = min(self.round_tokens, max(self.round_tokens // 8, -(-self.queued_tokens // threads)))
            pieces = []
            while self.queue and budget > 0:
                job = self.queue[0]
                start = end = job.taken
                while end < len(job.lengths) and (end == start and not pieces or job.lengths[end] <= budget):
                    budget -= job.lengths[end]
                    end += 1
                if end > start:
                    pieces.append((job, start, end))
                    job.taken = end
                    self.queued_tokens -= sum(job.lengths[start:end])
                if job.taken < len(job.lengths):
                    break                                              # the round is full
                self.queue.popleft()
            self.gauges()
            if pieces:
                self.running += 1
                self.running_tokens += tokens_of(pieces)
            return pieces

    def run(self):
        pool = runtime.workers(self.model.threads)
        while True:
            self.slots.acquire()
            pieces = self.take_round()
            if pieces is None:
                return
            if not pieces:
                self.slots.release()
                continue
            try:
                pool.submit(self.embed_round, pieces)
            except RuntimeError:                                       # the interpreter is exiting
                self.embed_round(pieces)

    def embed_round(self, pieces):
        try:
            with runtime.one_blas_thread():                            # a round on each core: one BLAS thread each
                self.embed_pieces(pieces)
        finally:
            with self.lock:
                self.running -= 1
                self.running_tokens -= tokens_of(pieces)
                self.lock.notify_all()
            self.slots.release()

    def embed_pieces(self, pieces):
        started = time.monotonic()
        tokens = 0
        for normalize in (True, False, None):
            group = [piece for piece in pieces if piece[0].normalize is normalize]
            if not group:
                continue
            token_ids = [ids for job, start, end in group for ids in job.token_ids[start:end]]
            tokens += sum(len(ids) for ids in token_ids)
            try:
                vectors = self.model.embed_tokens(token_ids, normalize=normalize, threads=1)
            except Exception as e:                                     # a bug: each request answers 500
                print(f"e5np serve: internal error: {e!r}", file=sys.stderr)
                for job, _, _ in group:
                    self.drop(job)
                    job.settle(error=e)
                continue
            row = 0
            for job, start, end in group:
                job.vectors[start:end] = vectors[row:row + end - start]
                row += end - start
                with self.lock:
                    job.done += end - start
                    finished = job.done == len(job.lengths)
                if finished:
                    job.settle(job.vectors)
        elapsed = time.monotonic() - started
        if elapsed > 0:
            rate = tokens / elapsed * self.model.threads
            with self.lock:
                old = self.tokens_per_second
                self.tokens_per_second = rate if old is None else 0.8 * old + 0.2 * rate
        if self.metrics:
            self.metrics["batch_texts"].observe(sum(end - start for _, start, end in pieces))
            self.metrics["batch_tokens"].observe(tokens)
            self.metrics["tokens"].inc(tokens)


# --- the application -----------------------------------------------------------------------------------


def make_metrics(registry):
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "requests": Counter("e5np_requests", "HTTP requests answered", ["route", "status"], registry=registry),
        "duration": Histogram("e5np_request_duration_seconds", "Time to answer a request", ["route", "status"],
                              registry=registry,
                              buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)),
        "queue_tokens": Gauge("e5np_queue_tokens", "Tokens queued, not yet taken by a batch", registry=registry),
        "queue_requests": Gauge("e5np_queue_requests", "Requests with texts queued", registry=registry),
        "batch_texts": Histogram("e5np_batch_texts", "Texts in a batcher round (one model.embed_tokens call)",
                                 registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)),
        "batch_tokens": Histogram("e5np_batch_tokens", "Tokens in a batcher round", registry=registry,
                                  buckets=(16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)),
        "tokens": Counter("e5np_tokens_embedded", "Tokens embedded", registry=registry),
        "rejected": Counter("e5np_rejected", "Requests refused with 429: the queue was full", registry=registry),
    }


def route_path(path):
    """The route a request's path names: the path, a trailing slash dropped ("/v1/embeddings/" is
    "/v1/embeddings")."""
    return path[:-1] if path.endswith("/") and len(path) > 1 else path


def route_label(scope):
    """The route an HTTP request is counted under in /metrics: its route_path if it is one of ROUTES, else
    "other"."""
    path = route_path(scope["path"])
    return path if (scope["method"], path) in ROUTES else "other"


def count_answer(metrics, route, status, started):
    """One answered request in /metrics: counted, and timed from started (time.monotonic()), by route and status."""
    labels = (route, str(status))
    metrics["requests"].labels(*labels).inc()
    metrics["duration"].labels(*labels).observe(time.monotonic() - started)


def metrics_middleware(app, metrics):
    """Counts and times each HTTP request by route (unknown paths as "other") and status."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        started, status = time.monotonic(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            count_answer(metrics, route_label(scope), status[0], started)

    return middleware


async def receive_within(receive, seconds):
    """receive()'s next ASGI message, or asyncio.TimeoutError if none comes within seconds. asyncio.timeout where
    there is one (Python >= 3.11): a timer on the waiting task. Before it, asyncio.wait_for runs the call as a task
    of its own, a task (and a turn of the event loop) for every chunk of every body."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await receive()
    return await asyncio.wait_for(receive(), seconds)


async def send_answer(send, status, body, headers=None):
    """An HTTP answer through ASGI's send: status, body (JSON text, or bytes; empty: no content type), extra
    headers {name: value}."""
    body = body.encode() if isinstance(body, str) else body
    raw = [(b"content-type", b"application/json")] if body else []
    raw.append((b"content-length", str(len(body)).encode()))
    raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Arrival:
    """A request the batcher's next round may wait for (Batcher.arriving): from when it is read until its texts
    are queued, or it is refused or fails (over())."""

    def __init__(self, batcher):
        self.batcher, self.pending = batcher, True
        batcher.arrival(+1)

    def over(self):
        if self.pending:
            self.pending = False
            self.batcher.arrival(-1)


def make_app(model, model_name=None, max_body_bytes=4 * 2**20, max_inputs=2048, idle_timeout=60,
             truncation="ignore", max_queue_tokens=32768, batch_wait_ms=2.0, registry=None, chunking=None,
             chunk_overlap=None):
    """(the ASGI application serving model, its Batcher). The batcher's thread starts now and stops with the app's
    lifespan shutdown (or batcher.stop()). registry: the prometheus_client CollectorRegistry its /metrics show
    (default: a new one, so that a process can make several apps). chunking, chunk_overlap: what a request that
    names neither gets (ValueError for values encode() would refuse)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if truncation not in ("ignore", "error"):
        raise ValueError(f"truncation must be 'ignore' or 'error', got {truncation!r}")
    if not batch_wait_ms >= 0:
        raise ValueError(f"batch_wait_ms must be 0 or more, got {batch_wait_ms!r}")
    if check_chunking(chunking, chunk_overlap):
        check_chunk_pooling(model.pooling)
        model_splitter(model, model.prefix(), chunk_overlap)           # an overlap too large for the windows
    model_name = model_name or str(model.name)
    names = {model_name, str(model.name)}
    registry = registry if registry is not None else CollectorRegistry()
    metrics = make_metrics(registry)
    batcher = Batcher(model, max_queue_tokens, batch_wait_ms / 1000, metrics=metrics)

    def json_response(status, payload, headers=None):
        return Response(json.dumps(payload), status, headers=headers, media_type="application/json")

    async def read_body(scope, receive):
        """The body, read under max_body_bytes, each chunk within idle_timeout; RequestError (411, 413, 408)."""
        headers = dict(reversed(scope["headers"]))                     # ASGI's lowercase names; the first of each
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length is None and not chunked:
            raise RequestError(411, "a Content-Length header is required", headers={"Connection": "close"})
        if length is not None and int(length) > max_body_bytes:                 # uvicorn's parser checked it
            raise RequestError(413, f"request body of {int(length)} bytes exceeds the limit of {max_body_bytes}",
                               headers={"Connection": "close"})               # not read
        body = bytearray()
        while True:
            try:
                message = await receive_within(receive, idle_timeout)
            except asyncio.TimeoutError:
                raise RequestError(408, f"the request body did not arrive within {idle_timeout:g} s",
                                   headers={"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            body += message.get("body", b"")
            if len(body) > max_body_bytes:                                       # chunked, no length declared
                raise RequestError(413, f"request body of more than {max_body_bytes} bytes exceeds the limit of "
                                        f"{max_body_bytes}", headers={"Connection": "close"})
            if not message.get("more_body", False):
                return bytes(body)

    def tokenize(texts, kind, truncate, field):
        prefix = model.prefix(kind)
        texts = [prefix + text for text in texts] if prefix else texts
        encodings = encode_batch(model.tokenizer, texts)
        if not truncate and (too_long := overflowing(encodings)):
            hint = ("shorten it, or start the server with --truncation ignore to embed its first tokens"
                    if field == "input" else "shorten it, or send \"truncate\": true")
            raise too_long_error(too_long, model.max_length, field, hint)
        return [e.ids for e in encodings]

    def windows_of(texts, kind, overlap):
        """Each text's windows (chunking "mean"); RequestError for an overlap its windows cannot take."""
        try:
            return model_splitter(model, model.prefix(kind), overlap).split(texts)
        except ValueError as e:
            raise RequestError(400, str(e), param="chunk_overlap" if "chunk_overlap" in str(e) else "chunking") \
                from None

    def chunking_of(asked, overlap):
        """(chunking, chunk_overlap) for a request asking for these (None: the server's), checked."""
        asked = chunking if asked is None else (None if asked == "none" else asked)
        if asked is None and overlap is not None:
            raise RequestError(400, "'chunk_overlap' is for \"chunking\": \"mean\": without chunking a long text is "
                                    "cut at the model's limit", param="chunk_overlap")
        if asked is None:
            return None, None
        try:
            check_chunk_pooling(model.pooling)
        except ValueError as e:
            raise RequestError(400, str(e), param="chunking") from None
        return asked, chunk_overlap if overlap is None else overlap

    async def off_loop(function, *args, big=False):
        return await asyncio.to_thread(function, *args) if big else function(*args)

    async def embed(receive, arrival, texts, kind, truncate, normalize, field, chunk=(None, None)):
        """Vectors [n, H] and token counts [n] of texts, through the batcher; waits while watching for the
        client to leave (then its queued texts are dropped). chunk: the request's (chunking, chunk_overlap); with
        chunking "mean" each text's windows are queued as texts, and their vectors combined as encode() does."""
        big = len(texts) > 8 or sum(map(len, texts)) > 4096
        chunked, overlap = chunking_of(*chunk)
        if chunked:
            windows = await off_loop(windows_of, texts, kind, overlap, big=big)
            token_ids = [ids for w in windows for ids in w.token_ids]
        else:
            token_ids = await off_loop(tokenize, texts, kind, truncate, field, big=big)
        loop = asyncio.get_running_loop()
        job = Job(token_ids, False if chunked else normalize, model.dim, model.dtype, loop, loop.create_future())
        try:
            batcher.submit(job)
        except Overloaded as e:
            metrics["rejected"].inc()
            raise RequestError(429, f"the server's queue is full ({batcher.max_queue_tokens} tokens); retry after "
                                    f"{e.args[0]} s", kind="rate_limit_error", code="rate_limit_exceeded",
                               headers={"Retry-After": str(e.args[0])}) from None
        finally:
            arrival.over()
        # The client may hang up while its texts wait: a task watches for it, and cancels the wait if it does.
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        gone.add_done_callback(lambda _: job.future.cancel())          # a no-op once the vectors are in
        try:
            await job.future
        except asyncio.CancelledError:                                 # the client left, or shutdown gave up
            batcher.drop(job)
            job.future.cancel()
            if gone.done() and not gone.cancelled():                   # the watcher saw the hang-up: it cancelled
                raise ClientGone() from None
            raise                                                      # shutdown cancelled this request's task
        finally:
            gone.cancel()
        if chunked:
            normalize = model.normalize if normalize is None else normalize
            vectors, counts = await off_loop(combine_windows, windows, job.future.result(), normalize, model.dtype,
                                             big=big)
            return vectors, counts, big
        return job.future.result(), np.array(job.lengths), big

    async def wait_for_disconnect(receive):
        while (await receive())["type"] != "http.disconnect":
            pass

    async def answer(scope, receive, send, handle, error_body):
        """Runs handle(scope, receive, arrival) -> JSON text, and sends its answer: 200 with it, or the error's."""
        started, arrival, headers = time.monotonic(), Arrival(batcher), None
        try:
            status, payload = 200, await handle(scope, receive, arrival)
        except RequestError as e:
            status, payload, headers = e.status, json.dumps(error_body(e)), e.headers
        except ClientGone:
            status, payload = 499, b""                                 # nobody reads it; counted in /metrics
        except asyncio.CancelledError:                                 # shutdown's graceful timeout has passed
            e = RequestError(503, "the server shut down before this request was embedded", kind="server_error",
                             headers={"Connection": "close"})
            status, payload, headers = e.status, json.dumps(error_body(e)), e.headers
        except Exception as e:                                         # a bug, not the client's fault
            print(f"e5np serve: internal error: {e!r}", file=sys.stderr)
            status, payload = 500, json.dumps(error_body(RequestError(500, "internal error", kind="server_error")))
        finally:
            arrival.over()
        try:
            await send_answer(send, status, payload, headers)
        finally:
            count_answer(metrics, route_label(scope), status, started)

    async def openai_embeddings(scope, receive, send):
        async def handle(scope, receive, arrival):
            body = await read_body(scope, receive)
            texts, encoding, name, kind, chunk = await off_loop(parse_request, body, max_inputs, model.dim,
                                                                big=len(body) > 65536)
            if name is not None and name not in names:
                raise RequestError(404, f"The model '{name}' does not exist: this server serves '{model_name}'",
                                   param="model", code="model_not_found")
            vectors, counts, big = await embed(receive, arrival, texts, kind, truncation == "ignore", None, "input",
                                               chunk)
            return await off_loop(embeddings_json, vectors, counts, encoding, model_name, big=big)

        await answer(scope, receive, send, handle, openai_error_body)

    async def tei_embed(scope, receive, send):
        async def handle(scope, receive, arrival):
            body = await read_body(scope, receive)
            texts, normalize, truncate, kind, chunk = await off_loop(parse_tei_request, body, max_inputs,
                                                                     big=len(body) > 65536)
            truncate = truncation == "ignore" if truncate is None else truncate
            vectors, _, big = await embed(receive, arrival, texts, kind, truncate, normalize, "inputs", chunk)
            return await off_loop(vectors_json, vectors, big=big)

        await answer(scope, receive, send, handle, tei_error_body)

    async def health(request):
        return JSONResponse({"status": "ok", "model": model_name, "dim": model.dim})

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "e5np"}]})

    async def metrics_page(request):
        return Response(generate_latest(registry), 200, media_type=CONTENT_TYPE_LATEST)

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        return json_response(status, openai_error_body(RequestError(
            status, f"no route {request.method} {request.url.path}", kind="not_found_error")))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(batcher.stop)

    routes = [Route("/health", health, methods=["GET"]), Route("/v1/models", models, methods=["GET"]),
              Route("/metrics", metrics_page, methods=["GET"])]
    others = metrics_middleware(Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found},
                                          lifespan=lifespan), metrics)
    # The two embedding routes are plain ASGI: each request to them would otherwise cross Starlette's middleware,
    # router and request objects, which cost the event loop (shared by every request) about as much as the rest of
    # the request's handling. Everything else is Starlette's.
    embedding_routes = {EMBEDDINGS: openai_embeddings, TEI_EMBED: tei_embed}

    async def not_allowed(scope, send):
        started = time.monotonic()
        error = RequestError(405, f"no route {scope['method']} {scope['path']}: it takes POST", kind="not_found_error")
        try:
            await send_answer(send, 405, json.dumps(openai_error_body(error)), {"Allow": "POST"})
        finally:
            count_answer(metrics, route_label(scope), 405, started)

    async def application(scope, receive, send):
        route = embedding_routes.get(route_path(scope["path"])) if scope["type"] == "http" else None
        if route is None:
            return await others(scope, receive, send)
        if scope["method"] != "POST":
            return await not_allowed(scope, send)
        return await route(scope, receive, send)

    return application, batcher


class ClientGone(Exception):
    """The client hung up before its answer."""


# --- the server ----------------------------------------------------------------------------------------


def closing_silent_connections(protocol_class):
    """uvicorn's HTTP protocol, with its keep-alive timer started when a connection opens: uvicorn starts it only
    after a response, so a client that connects and never sends a request would hold its connection forever."""
    if not all(hasattr(protocol_class, name) for name in ("connection_made", "timeout_keep_alive_handler")):
        return protocol_class

    class Protocol(protocol_class):
        def connection_made(self, transport):
            super().connection_made(transport)
            if getattr(self, "timeout_keep_alive_task", False) is None:
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)

    return Protocol


class EmbeddingServer:
    """uvicorn serving make_app's application on a socket bound now (port 0 picks a free one): server_address,
    serve_forever() (in the main thread: SIGTERM and SIGINT shut it down gracefully, and it returns), shutdown()
    from another thread, server_close()."""

    def __init__(self, app, batcher, host, port, graceful_timeout=30, idle_timeout=60, backlog=2048,
                 limit_concurrency=None, log_level="warning"):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto named: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose proto reads TCP, and
        # with it on a keep-alive client's every answer after the first waits ~40 ms for a delayed ACK between the
        # headers' write and the body's
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(backlog)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        self.batcher = batcher
        config = uvicorn.Config(app, backlog=backlog, timeout_graceful_shutdown=graceful_timeout,
                                timeout_keep_alive=idle_timeout, limit_concurrency=limit_concurrency,
                                log_level=log_level, access_log=False, lifespan="on", server_header=False,
                                headers=[("server", "e5np")], proxy_headers=False)   # no X-Forwarded-For: no use
        config.load()
        config.http_protocol_class = closing_silent_connections(config.http_protocol_class)
        self.uvicorn = uvicorn.Server(config)
        self.stopped = threading.Event()

    def serve_forever(self):
        """Serve until shutdown() or, in the main thread, SIGTERM / SIGINT: then stop accepting, finish the
        requests in flight (at most graceful_timeout seconds) and return."""
        main = threading.current_thread() is threading.main_thread()
        # uvicorn re-raises the signal that stopped it once it has shut down, which would kill the process by the
        # signal: while it serves, the handlers it puts back are ones that do nothing.
        previous = {sig: signal.signal(sig, lambda *args: None) for sig in (signal.SIGTERM, signal.SIGINT)} \
            if main else {}
        try:
            self.uvicorn.run(sockets=[self.socket])                    # on uvloop where installed (the extra's)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.batcher.stop()
            self.stopped.set()

    @property
    def started(self):
        return self.uvicorn.started

    def shutdown(self, timeout=60):
        self.uvicorn.should_exit = True
        self.stopped.wait(timeout)

    def server_close(self):
        self.socket.close()


def make_server(model, host="127.0.0.1", port=8080, model_name=None, max_body_bytes=4 * 2**20, max_inputs=2048,
                idle_timeout=60, truncation="ignore", max_queue_tokens=32768, batch_wait_ms=2.0, graceful_timeout=30,
                registry=None, backlog=2048, chunking=None, chunk_overlap=None):
    """An EmbeddingServer for model, bound to host:port (OSError if it cannot be); call serve_forever() or
    serve_in_thread(). Rounds run on model.threads workers (e5np.load(threads=N); `e5np serve --threads N`).
    idle_timeout: seconds a connection may stay silent (between requests, or mid-body) before it is closed.
    truncation: an input longer than the model's max_length is embedded from its first tokens ("ignore"),
    or the request gets 400 naming it ("error"). max_queue_tokens: past it, 429. batch_wait_ms: how long a round
    waits for requests still arriving. graceful_timeout: seconds requests in flight get to finish at shutdown.
    chunking ("mean"), chunk_overlap: how texts are embedded for requests that do not say (encode()'s options)."""
    app, batcher = make_app(model, model_name, max_body_bytes, max_inputs, idle_timeout, truncation,
                            max_queue_tokens, batch_wait_ms, registry, chunking, chunk_overlap)
    try:
        return EmbeddingServer(app, batcher, host, port, graceful_timeout, idle_timeout, backlog)
    except BaseException:
        batcher.stop()
        raise


def serve_in_thread(server, timeout=30):
    """Run server.serve_forever() on a daemon thread; returns once it accepts connections."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return thread
