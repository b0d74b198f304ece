"""The embeddings server: the real openai client, raw HTTP for errors, and bounded load tests."""

import contextlib
import http.client
import json
import os
import re
import socket
import sys
import threading
import time

import numpy as np
import pytest

import e5np

pytest.importorskip("uvicorn", reason='the serve extra: pip install "e5np[serve]"')
pytest.importorskip("starlette", reason='the serve extra: pip install "e5np[serve]"')
pytest.importorskip("prometheus_client", reason='the serve extra: pip install "e5np[serve]"')
from e5np.server import float_vectors_from_base64, make_server, serve_in_thread
from tests.checkpoints import TINY_DIR, with_prompts
from tests.row_independence import assert_same_vectors


def floats(embeddings):
    """JSON answers' floats as the float32 vectors they write (each in the 9 digits that give its float32 back)."""
    return np.asarray(embeddings, dtype=np.float32)


@pytest.fixture(scope="module")
def tiny():
    return e5np.load(TINY_DIR)


@pytest.fixture(scope="module")
def server(tiny):
    srv = make_server(tiny, "127.0.0.1", 0, model_name="tiny-bert", max_body_bytes=64 * 1024, max_inputs=16)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def request(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, json.loads(payload) if payload else None


def test_openai_client_float_and_base64(server, tiny):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="unused")
    texts = ["query: hello world", "passage: the cat sat on the mat", ""]
    response = client.embeddings.create(model="tiny-bert", input=texts, encoding_format="float")
    assert response.model == "tiny-bert" and [d.index for d in response.data] == [0, 1, 2]
    np.testing.assert_allclose([d.embedding for d in response.data], tiny.encode(texts), atol=1e-7)
    assert response.usage.prompt_tokens == response.usage.total_tokens == int(tiny.tokenize(texts).lengths.sum())
    single = client.embeddings.create(model="tiny-bert", input="just one")
    np.testing.assert_allclose(single.data[0].embedding, tiny.encode("just one"), atol=1e-7)


def test_base64_encoding_raw(server, tiny):
    status, body = request(server, "POST", "/v1/embeddings", {"input": ["a", "b c"], "encoding_format": "base64"})
    assert status == 200
    np.testing.assert_array_equal(float_vectors_from_base64([d["embedding"] for d in body["data"]]),
                                  tiny.encode(["a", "b c"]))


def test_float_answers_give_each_float32_back_in_at_most_9_digits(server, tiny):
    """The float answers write each float32 in 9 significant digits (not its float64 form's 17): parsed and made
    float32 again, they are encode's vectors bit for bit, in both routes; a float64 model's keep every digit."""
    texts = ["a", "b c", "a longer text of several words"]
    expected = tiny.encode(texts)
    for path, body in (("/v1/embeddings", {"input": texts}), ("/embed", {"inputs": texts})):
        status, headers, payload = exchange(server, "POST", path, json.dumps(body).encode())
        assert status == 200
        answer = json.loads(payload)
        vectors = [d["embedding"] for d in answer["data"]] if path == "/v1/embeddings" else answer
        np.testing.assert_array_equal(floats(vectors), expected)
        numbers = re.findall(rb"-?\d[\d.]*(?:e[-+]\d+)?", payload.split(b'"embedding"', 1)[-1])
        digits = [len(n.lstrip(b"-").split(b"e")[0].replace(b".", b"").lstrip(b"0")) for n in numbers]
        assert len(numbers) >= expected.size and max(digits) <= 9, max(digits)
    model64 = e5np.load(TINY_DIR, dtype="float64")
    with serving(model64) as srv:
        status, body = request(srv, "POST", "/embed", {"inputs": texts})
    assert status == 200
    np.testing.assert_array_equal(np.asarray(body), model64.encode(texts))


def test_null_options_are_the_defaults(server, tiny):
    """Clients that serialize every field send "encoding_format": null; it was refused as not 'float' or 'base64'."""
    status, body = request(server, "POST", "/v1/embeddings", {"input": ["a"], "encoding_format": None,
                                                             "dimensions": None, "user": None, "model": None})
    assert status == 200, body
    np.testing.assert_allclose(body["data"][0]["embedding"], tiny.encode("a"), atol=1e-7)


def test_dimensions_of_the_models_size_are_what_it_makes(server, tiny):
    """A client configured with the model's own size (dimensions=384 for e5-small) asks for nothing e5np lacks."""
    status, body = request(server, "POST", "/v1/embeddings", {"input": ["a"], "dimensions": tiny.dim})
    assert status == 200, body
    np.testing.assert_allclose(body["data"][0]["embedding"], tiny.encode("a"), atol=1e-7)


def test_a_declared_default_prompt_is_added_as_encode_adds_it(tiny, tmp_path):
    """An OpenAI request has no field for a prompt: inputs get the checkpoint's default prompt, as model.encode() and
    sentence-transformers' encode() give them, and usage counts its tokens."""
    model = e5np.load(with_prompts(TINY_DIR, tmp_path / "model"))
    srv = make_server(model, "127.0.0.1", 0, model_name="prompted", max_body_bytes=64 * 1024, max_inputs=16)
    serve_in_thread(srv)
    try:
        status, body = request(srv, "POST", "/v1/embeddings", {"input": ["a cat", "hello world"]})
    finally:
        srv.shutdown()
        srv.server_close()
    assert status == 200
    np.testing.assert_allclose([d["embedding"] for d in body["data"]],
                               tiny.encode(["search_query: a cat", "search_query: hello world"]), atol=1e-7)
    assert body["usage"]["prompt_tokens"] == int(tiny.tokenize(["search_query: a cat",
                                                                 "search_query: hello world"]).lengths.sum())


def test_health_and_models(server):
    assert request(server, "GET", "/health") == (200, {"status": "ok", "model": "tiny-bert", "dim": 32})
    status, body = request(server, "GET", "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny-bert"


@pytest.mark.parametrize("body, status, words", [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "must be a JSON object"),
    pytest.param('{"input": ' + "[" * 30_000 + "]" * 30_000 + "}", 400, "nested too deeply to parse",
                 id="deep-nesting"),                                   # (Python 3.13 parses 5,000 levels)
    ({"model": "x"}, 400, "'input' is required"),
    ({"input": 5}, 400, "'input' must be a string or a non-empty array"),
    ({"input": []}, 400, "non-empty"),
    ({"input": ["ok", None]}, 400, "'input[1]' must be a string, got NoneType"),
    ({"input": [[1, 2, 3]]}, 400, "token arrays are not supported"),
    ({"input": ["ok", "a \ud800 b"]}, 400, "'input[1]' is not valid Unicode: a lone surrogate (U+D800) at offset 2"),
    ({"input": "x", "encoding_format": "int8"}, 400, "'encoding_format'"),
    ({"input": "x", "dimensions": 8}, 400, "'dimensions' must be 32, the model's size, or left out"),
    ({"input": "x", "dimensions": "32"}, 400, "'dimensions' must be 32"),
    ({"input": "x", "dimensions": True}, 400, "'dimensions' must be 32"),
    ({"input": ["x"] * 17}, 413, "the limit is 16"),
    ({"input": "x" * 70_000}, 413, "exceeds the limit of 65536"),
])
def test_bad_requests_get_openai_errors(server, body, status, words):
    got_status, got = request(server, "POST", "/v1/embeddings", body)
    assert got_status == status
    assert set(got["error"]) == {"message", "type", "param", "code"} and words in got["error"]["message"]
    assert request(server, "GET", "/health")[0] == 200  # still serving


def test_unknown_routes_are_404(server):
    assert request(server, "GET", "/nope")[0] == 404
    status, body = request(server, "POST", "/v1/chat/completions", {"input": "x"})
    assert status == 404 and body["error"]["type"] == "not_found_error"


def test_embedding_routes_take_post_only_and_a_trailing_slash(server, tiny):
    for path, body, openai in (("/v1/embeddings", {"input": ["a cat"]}, True),
                               ("/embed", {"inputs": ["a cat"]}, False)):
        status, got = request(server, "POST", path + "/", body)
        assert status == 200
        vectors = floats([item["embedding"] for item in got["data"]] if openai else got)
        assert_same_vectors(vectors, tiny.encode(["a cat"]))
        for method in ("GET", "PUT", "DELETE"):
            connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
            connection.request(method, path)
            response = connection.getresponse()
            answer = json.loads(response.read())
            connection.close()
            assert response.status == 405 and response.getheader("Allow") == "POST"
            assert answer["error"]["type"] == "not_found_error" and f"{method} {path}" in answer["error"]["message"]
    assert request(server, "GET", "/health")[0] == 200


def test_load_8_threads_x_50_requests(server, tiny):
    texts = [f"request text number {i} about cats and dogs" for i in range(50)]
    expected = tiny.encode(texts)
    errors, mismatches = [], []

    def client(worker):
        for i in range(50):
            j = (i + worker * 7) % 50
            try:
                status, body = request(server, "POST", "/v1/embeddings", {"input": [texts[j], texts[(j + 1) % 50]]})
                got = np.array([d["embedding"] for d in body["data"]])
                if status != 200 or np.abs(got - expected[[j, (j + 1) % 50]]).max() > 1e-6:
                    mismatches.append((worker, i, status))
            except Exception as e:  # collected and reported below
                errors.append((worker, i, repr(e)))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches, (errors[:3], mismatches[:3])


def test_serve_command(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "e5np", "serve", "-m", str(TINY_DIR), "--port", str(port)],
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        assert f"http://127.0.0.1:{port}/v1/embeddings" in line
        for _ in range(50):
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/health")
                assert connection.getresponse().status == 200
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_connections_send_without_nagles_delay(server, tiny):
    """Every connection the server holds has TCP_NODELAY: an answer goes out as two writes (headers, body), and
    with Nagle's algorithm on, a keep-alive client's second answer and every one after waited ~40 ms for the
    delayed ACK of the first write (asyncio sets TCP_NODELAY only where the listening socket's proto is TCP)."""
    assert server.socket.proto == socket.IPPROTO_TCP
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        for _ in range(2):                                             # the same keep-alive connection twice
            connection.request("POST", "/v1/embeddings", body=json.dumps({"input": "a query"}),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())["data"]
        held = [protocol.transport.get_extra_info("socket") for protocol in server.uvicorn.server_state.connections]
        assert held and all(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for sock in held)
    finally:
        connection.close()


def test_silent_and_stalled_connections_are_closed_not_held(tiny):
    """A client that goes quiet (idle keep-alive, or a body short of its Content-Length) frees its thread."""
    srv = make_server(tiny, "127.0.0.1", 0, idle_timeout=0.5)
    serve_in_thread(srv)
    try:
        with socket.create_connection(srv.server_address[:2], timeout=30) as idle:
            started = time.monotonic()
            assert idle.recv(1024) == b""                              # closed by the server, nothing sent
            assert time.monotonic() - started < 10
        with socket.create_connection(srv.server_address[:2], timeout=30) as stalled:
            stalled.sendall(b'POST /v1/embeddings HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"input": ')
            reply = b""
            while chunk := stalled.recv(4096):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in body
        assert request(srv, "GET", "/health")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_over_long_inputs_are_truncated_or_refused(server, tiny):
    long_text = "word " * 300                                          # over the tiny model's 128 tokens
    status, body = request(server, "POST", "/v1/embeddings", {"input": ["short", long_text]})
    assert status == 200 and body["usage"]["prompt_tokens"] == len(tiny.tokenize("short").tokens[0]) + 128
    np.testing.assert_allclose(body["data"][1]["embedding"], tiny.encode(long_text, truncation="ignore"), atol=1e-7)

    strict = make_server(tiny, "127.0.0.1", 0, truncation="error")
    serve_in_thread(strict)
    try:
        status, body = request(strict, "POST", "/v1/embeddings", {"input": ["short", long_text, long_text]})
        assert status == 400 and body["error"]["param"] == "input"
        assert "'input[1]' is longer than the model's limit of 128 tokens (2 input(s) are)" in body["error"]["message"]
        assert request(strict, "POST", "/v1/embeddings", {"input": "short"})[0] == 200
    finally:
        strict.shutdown()
        strict.server_close()
    with pytest.raises(ValueError, match="truncation must be 'ignore' or 'error', got 'warn'"):
        make_server(tiny, "127.0.0.1", 0, truncation="warn")


def test_requests_share_one_pool_of_workers(monkeypatch):
    """One request's batches run on every worker; many requests at once never run more batches than workers."""
    model = e5np.load(TINY_DIR, threads=2)
    run = model._run
    both_workers = threading.Barrier(2, timeout=30)
    lock, calls, active, most = threading.Lock(), [0], [0], [0]

    def watched_run(batch, **kwargs):
        with lock:
            calls[0] += 1
            first_two = calls[0] <= 2
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            if first_two:
                both_workers.wait()                                    # passes only if two batches run at once
            time.sleep(0.01)
            return run(batch, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(model, "_run", watched_run)
    srv = make_server(model, "127.0.0.1", 0)
    serve_in_thread(srv)
    try:
        texts = [f"text {i} " + "word " * (i % 7) for i in range(128)]  # several batches of 32
        status, body = request(srv, "POST", "/v1/embeddings", {"input": texts})
        assert status == 200 and not both_workers.broken               # one request, two workers at once
        expected = e5np.load(TINY_DIR).encode(texts)
        replies = [None] * 6

        def client(k):
            replies[k] = request(srv, "POST", "/v1/embeddings", {"input": texts})

        clients = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        for status, body in replies:
            assert status == 200
            np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected, atol=1e-6)
        assert most[0] == 2                                            # six requests, still two batches at a time
    finally:
        srv.shutdown()
        srv.server_close()


# --- the ASGI server: coalesced batches, backpressure, TEI, metrics, lifecycle ---------------------------------


@contextlib.contextmanager
def serving(model, **options):
    srv = make_server(model, "127.0.0.1", 0, **options)
    serve_in_thread(srv)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def exchange(server, method, path, body=None, headers=None):
    """(status, headers, decoded body) of one request."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request(method, path, body=json.dumps(body) if isinstance(body, (dict, list)) else body,
                       headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), payload


class Gate:
    """model.embed_tokens held until open() is called: a worker kept busy, so that requests queue behind it."""

    def __init__(self, model):
        self.opened, self.entered, self.calls = threading.Event(), threading.Semaphore(0), []
        inner = model.embed_tokens

        def embed_tokens(token_ids, **kwargs):
            self.calls.append([list(ids) for ids in token_ids])
            self.entered.release()
            self.opened.wait(30)
            return inner(token_ids, **kwargs)

        model.embed_tokens = embed_tokens

    def open(self):
        self.opened.set()


def in_thread(function, *args):
    """(thread, result): result["value"] is what function(*args) returned, or result["error"] what it raised."""
    result = {}

    def run():
        try:
            result["value"] = function(*args)
        except Exception as e:                                         # for the caller to judge
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def wait_until(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_async_openai_client_with_64_requests_in_flight(server, tiny):
    """64 concurrent single-text requests (and a few larger ones) are embedded in shared batches: each answer is the
    vector model.encode() gives its text."""
    openai = pytest.importorskip("openai")
    import asyncio

    texts = [f"query number {i} about " + "cats and dogs " * (i % 9) for i in range(64)]
    expected = tiny.encode(texts)

    async def run():
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="unused",
                                    max_retries=0)
        try:
            singles = [client.embeddings.create(model="tiny-bert", input=text) for text in texts]
            groups = [client.embeddings.create(model="tiny-bert", input=texts[k:k + 8]) for k in range(0, 64, 8)]
            return await asyncio.gather(*singles, *groups)
        finally:
            await client.close()

    answers = asyncio.run(run())
    assert_same_vectors(floats([a.data[0].embedding for a in answers[:64]]), expected)
    for k, answer in zip(range(0, 64, 8), answers[64:]):
        assert_same_vectors(floats([d.embedding for d in answer.data]), expected[k:k + 8])
    assert [a.usage.prompt_tokens for a in answers[:64]] == [int(n) for n in tiny.tokenize(texts).lengths]


def test_concurrent_requests_share_batches(tiny):
    """Requests that wait together are embedded together: a batch holds texts of several requests."""
    model = e5np.load(TINY_DIR, threads=1)
    gate = Gate(model)
    with serving(model, batch_wait_ms=0) as srv:
        first, _ = in_thread(request, srv, "POST", "/v1/embeddings", {"input": "the first one"})
        assert gate.entered.acquire(timeout=30)                        # the one worker is busy with it
        texts = [f"waiting text {i}" for i in range(6)]
        waiting = [in_thread(request, srv, "POST", "/v1/embeddings", {"input": text}) for text in texts]
        wait_until(lambda: srv.batcher.queued_tokens == sum(len(t.ids) for t in
                                                            e5np.tokenizer.encode_batch(model.tokenizer, texts)))
        gate.open()
        first.join(30)
        for (thread, result), expected in zip(waiting, tiny.encode(texts)):
            thread.join(30)
            status, body = result["value"]
            assert status == 200
            assert_same_vectors(floats(body["data"][0]["embedding"]), expected)
    assert len(gate.calls) == 2 and len(gate.calls[1]) == 6                 # the six in one round


@pytest.fixture(scope="module")
def prompted(tmp_path_factory):
    return e5np.load(with_prompts(TINY_DIR, tmp_path_factory.mktemp("prompted") / "model"))


@pytest.mark.parametrize("input_type, encoder", [("query", "encode_queries"), ("passage", "encode_passages"),
                                                 ("document", "encode_passages"), (None, "encode")])
def test_input_type_adds_the_models_prefix(prompted, input_type, encoder):
    texts = ["a cat", "hello world"]
    with serving(prompted, model_name="prompted") as srv:
        status, body = request(srv, "POST", "/v1/embeddings", {"input": texts, "input_type": input_type})
    assert status == 200
    assert_same_vectors(floats([d["embedding"] for d in body["data"]]), getattr(prompted, encoder)(texts))
    prefixed = [prompted.prefix(input_type) + text for text in texts]
    assert body["usage"]["prompt_tokens"] == int(prompted.tokenize(prefixed).lengths.sum())


def test_input_type_must_be_a_kind(server):
    status, body = request(server, "POST", "/v1/embeddings", {"input": "x", "input_type": "question"})
    assert status == 400 and body["error"]["param"] == "input_type" and "'question'" in body["error"]["message"]


def test_another_model_is_not_found(server):
    status, body = request(server, "POST", "/v1/embeddings", {"input": "x", "model": "text-embedding-3-small"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert "'text-embedding-3-small'" in body["error"]["message"] and "'tiny-bert'" in body["error"]["message"]
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="unused",
                           max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_tei_embed(server, tiny, prompted):
    status, body = request(server, "POST", "/embed", {"inputs": ["a", "b c"]})
    assert status == 200 and np.asarray(body).shape == (2, tiny.dim)
    assert_same_vectors(floats(body), tiny.encode(["a", "b c"]))
    status, body = request(server, "POST", "/embed", {"inputs": "just one", "normalize": False})
    assert status == 200
    assert_same_vectors(floats(body), tiny.encode(["just one"], normalize=False))
    with serving(prompted) as srv:
        for prompt_name, encoder in (("query", "encode_queries"), ("passage", "encode_passages")):
            status, body = request(srv, "POST", "/embed", {"inputs": ["a cat"], "prompt_name": prompt_name})
            assert status == 200
            assert_same_vectors(floats(body), getattr(prompted, encoder)(["a cat"]))


@pytest.mark.parametrize("body, status, words", [
    ({"input": "x"}, 400, "'inputs' is required"),
    ({"inputs": []}, 400, "non-empty"),
    ({"inputs": "x", "normalize": "yes"}, 400, "'normalize' must be true or false"),
    ({"inputs": "x", "prompt_name": "classification"}, 400, "'prompt_name' must be one of"),
    ({"inputs": ["x"] * 17}, 413, "the limit is 16"),
    ({"inputs": "word " * 300, "truncate": False}, 400, "'inputs[0]' is longer than the model's limit of 128"),
])
def test_tei_embed_errors(server, body, status, words):
    got_status, got = request(server, "POST", "/embed", body)
    assert got_status == status and got["error_type"] == "validation" and words in got["error"]


def test_tei_truncate_true_embeds_the_first_tokens(server, tiny):
    status, body = request(server, "POST", "/embed", {"inputs": "word " * 300, "truncate": True})
    assert status == 200
    assert_same_vectors(floats(body), tiny.encode(["word " * 300], truncation="ignore"))


LONG = " ".join(["the cat sat on the mat", "a dog ran far away", "hello world", "b c"] * 40)   # ~5 windows


def test_chunking_mean_embeds_long_inputs_as_encode_does(server, tiny, prompted):
    """"chunking": "mean" on either route: a long input's vector is encode(chunking="mean")'s, usage counts every
    window's tokens, a short input's vector is the one it gets without chunking; chunk_overlap and input_type /
    prompt_name carry over; normalize false gives the unnormalized mean."""
    texts = [LONG, "a short one", LONG[:300]]
    status, body = request(server, "POST", "/v1/embeddings", {"input": texts, "chunking": "mean"})
    assert status == 200
    assert_same_vectors(floats([d["embedding"] for d in body["data"]]), tiny.encode(texts, chunking="mean"))
    assert body["usage"]["prompt_tokens"] == sum(int(c.token_counts.sum()) for c in tiny.encode_chunks(texts))
    assert len(tiny.encode_chunks(LONG).token_counts) > 2                      # it is chunked
    assert_same_vectors(floats(body["data"][1]["embedding"]), tiny.encode(["a short one"])[0])
    status, body = request(server, "POST", "/v1/embeddings", {"input": [LONG], "chunking": "mean",
                                                             "chunk_overlap": 40})
    assert status == 200
    assert_same_vectors(floats(body["data"][0]["embedding"]), tiny.encode(LONG, chunking="mean", chunk_overlap=40))
    status, body = request(server, "POST", "/embed", {"inputs": [LONG, "b c"], "chunking": "mean",
                                                      "normalize": False})
    assert status == 200
    assert_same_vectors(floats(body), tiny.encode([LONG, "b c"], chunking="mean", normalize=False))
    with serving(prompted) as srv:
        status, body = request(srv, "POST", "/v1/embeddings", {"input": [LONG], "chunking": "mean",
                                                              "input_type": "query"})
        assert status == 200
        assert_same_vectors(floats(body["data"][0]["embedding"]), prompted.encode_queries(LONG, chunking="mean"))
        status, body = request(srv, "POST", "/embed", {"inputs": [LONG], "chunking": "mean", "prompt_name": "passage"})
        assert status == 200
        assert_same_vectors(floats(body), prompted.encode_passages([LONG], chunking="mean"))


def test_the_servers_chunking_is_the_default_a_request_may_turn_off(tiny):
    """make_server(chunking="mean") (`e5np serve --chunking mean`): requests that do not say are chunked, with the
    server's overlap; "chunking": "none" cuts the input at the limit, as without it."""
    with serving(tiny, chunking="mean", chunk_overlap=30) as srv:
        status, body = request(srv, "POST", "/v1/embeddings", {"input": LONG})
        assert status == 200
        assert_same_vectors(floats(body["data"][0]["embedding"]), tiny.encode([LONG], chunking="mean",
                                                                              chunk_overlap=30)[0])
        status, body = request(srv, "POST", "/v1/embeddings", {"input": LONG, "chunking": "none"})
        assert status == 200
        assert_same_vectors(floats(body["data"][0]["embedding"]), tiny.encode([LONG], truncation="ignore")[0])
        assert body["usage"]["prompt_tokens"] == tiny.max_length


@pytest.mark.parametrize("body, param, words", [
    ({"chunking": "max"}, "chunking", "'chunking' must be 'mean', 'none' or left out, got 'max'"),
    ({"chunking": "mean", "chunk_overlap": 0}, "chunk_overlap", "must be a positive integer"),
    ({"chunking": "mean", "chunk_overlap": "8"}, "chunk_overlap", "must be a positive integer"),
    ({"chunking": "mean", "chunk_overlap": True}, "chunk_overlap", "must be a positive integer"),
    ({"chunk_overlap": 8}, "chunk_overlap", "'chunk_overlap' is for \"chunking\": \"mean\""),
    ({"chunking": "mean", "chunk_overlap": 126}, "chunk_overlap", "must be less than the 126 text tokens"),
])
def test_chunking_errors(server, body, param, words):
    status, got = request(server, "POST", "/v1/embeddings", {"input": LONG, **body})
    assert status == 400 and got["error"]["param"] == param and words in got["error"]["message"], got
    status, got = request(server, "POST", "/embed", {"inputs": LONG, **body})
    assert status == 400 and words in got["error"] and got["error_type"] == "validation", got


def test_chunking_needs_a_mean_pooling_model(tiny):
    cls_model = e5np.load(TINY_DIR, pooling="cls")
    with serving(cls_model) as srv:
        status, got = request(srv, "POST", "/v1/embeddings", {"input": LONG, "chunking": "mean"})
    assert status == 400 and got["error"]["param"] == "chunking" and "pools by 'cls'" in got["error"]["message"]
    with pytest.raises(ValueError, match="pools by 'cls'"):
        make_server(cls_model, "127.0.0.1", 0, chunking="mean")
    with pytest.raises(ValueError, match="chunk_overlap is for chunking='mean'"):
        make_server(tiny, "127.0.0.1", 0, chunk_overlap=8)
    with pytest.raises(ValueError, match="must be less than"):
        make_server(tiny, "127.0.0.1", 0, chunking="mean", chunk_overlap=500)


def metric(text, name, **labels):
    """The value of a sample in Prometheus text, 0 if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0


def test_metrics_count_what_was_sent(tiny):
    with serving(tiny) as srv:
        texts = ["one text", "two texts here", "three"]
        for text in texts:
            assert request(srv, "POST", "/v1/embeddings", {"input": text})[0] == 200
        assert request(srv, "POST", "/embed", {"inputs": texts})[0] == 200
        assert request(srv, "POST", "/v1/embeddings", {"input": []})[0] == 400
        assert request(srv, "GET", "/nope")[0] == 404
        status, headers, page = exchange(srv, "GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        page = page.decode()
    tokens = int(tiny.tokenize(texts).lengths.sum())
    assert metric(page, "e5np_requests_total", route="/v1/embeddings", status="200") == 3
    assert metric(page, "e5np_requests_total", route="/v1/embeddings", status="400") == 1
    assert metric(page, "e5np_requests_total", route="/embed", status="200") == 1
    assert metric(page, "e5np_requests_total", route="other", status="404") == 1
    assert metric(page, "e5np_request_duration_seconds_count", route="/v1/embeddings", status="200") == 3
    assert metric(page, "e5np_tokens_embedded_total") == 2 * tokens
    assert metric(page, "e5np_batch_texts_sum") == 6 and metric(page, "e5np_batch_tokens_sum") == 2 * tokens
    assert metric(page, "e5np_queue_tokens") == 0 and metric(page, "e5np_queue_requests") == 0
    assert metric(page, "e5np_rejected_total") == 0


def test_past_the_queue_bound_429_and_nothing_else():
    """A full queue answers 429 with Retry-After and an OpenAI error body; the requests it admitted get 200."""
    model = e5np.load(TINY_DIR, threads=1)
    gate = Gate(model)
    with serving(model, max_queue_tokens=8, batch_wait_ms=0) as srv:
        first, first_result = in_thread(request, srv, "POST", "/v1/embeddings", {"input": "the first one"})
        assert gate.entered.acquire(timeout=30)
        second, second_result = in_thread(request, srv, "POST", "/v1/embeddings", {"input": "second"})
        wait_until(lambda: srv.batcher.queued_tokens > 0)              # an empty queue takes any request
        refused = [in_thread(exchange, srv, "POST", "/v1/embeddings", {"input": f"more {i}"}) for i in range(12)]
        for thread, result in refused:
            thread.join(30)
            status, headers, body = result["value"]
            assert status == 429 and int(headers["retry-after"]) >= 1
            error = json.loads(body)["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        gate.open()
        for thread, result in ((first, first_result), (second, second_result)):
            thread.join(30)
            assert result["value"][0] == 200
        assert metric(exchange(srv, "GET", "/metrics")[2].decode(), "e5np_rejected_total") == 12


def test_an_overloaded_tiny_queue_answers_200_or_429_only(tiny):
    """64 clients at once on a queue of a few requests: every answer is a 200 or a 429, none a reset."""
    with serving(tiny, max_queue_tokens=20) as srv:
        statuses, errors = [], []

        def client(k):
            try:
                statuses.append(request(srv, "POST", "/v1/embeddings", {"input": [f"text {k}"] * 4})[0])
            except Exception as e:                                     # collected and reported below
                errors.append(repr(e))

        clients = [threading.Thread(target=client, args=(k,)) for k in range(64)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(60)
    assert not errors and len(statuses) == 64 and set(statuses) <= {200, 429}, (errors[:3], statuses)


def test_a_client_that_hangs_up_frees_its_place():
    """A queued request whose client disconnects leaves the queue: its texts are never embedded, and the room it
    held takes the next request."""
    model = e5np.load(TINY_DIR, threads=1)
    gate = Gate(model)
    with serving(model, max_queue_tokens=8, batch_wait_ms=0) as srv:
        first, first_result = in_thread(request, srv, "POST", "/v1/embeddings", {"input": "the first one"})
        assert gate.entered.acquire(timeout=30)
        leaving = socket.create_connection(srv.server_address[:2], timeout=30)
        body = json.dumps({"input": "a client that leaves"}).encode()
        leaving.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: srv.batcher.queued_tokens > 0)
        assert request(srv, "POST", "/v1/embeddings", {"input": "refused"})[0] == 429
        leaving.close()
        wait_until(lambda: srv.batcher.queued_tokens == 0)
        admitted, admitted_result = in_thread(request, srv, "POST", "/v1/embeddings", {"input": "admitted"})
        wait_until(lambda: srv.batcher.queued_tokens > 0)
        gate.open()
        first.join(30)
        admitted.join(30)
        assert first_result["value"][0] == 200 and admitted_result["value"][0] == 200
    left = model.tokenizer.encode("a client that leaves").ids
    assert all(left not in call for call in gate.calls)


def chunked(*parts):
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def test_a_content_length_that_is_not_a_length(server):
    """Answered 400 by uvicorn's HTTP parser (httptools, or h11 without it) before the application reads a byte."""
    for value in (b"abc", b"-5", b"1, 2"):
        with socket.create_connection(server.server_address[:2], timeout=30) as connection:
            connection.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n{}")
            assert connection.recv(4096).startswith(b"HTTP/1.1 400"), value


def test_a_body_without_content_length(server, tiny):
    """Neither Content-Length nor chunked: 411, as before. Chunked transfer encoding (which the standard-library
    server refused with 411) is read, within the body limit."""
    with socket.create_connection(server.server_address[:2], timeout=30) as connection:
        connection.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 411")
    body = json.dumps({"input": ["a", "b c"]}).encode()
    status, _, payload = exchange(server, "POST", "/v1/embeddings", chunked(body[:7], body[7:]),
                                  {"Transfer-Encoding": "chunked"})
    assert status == 200
    assert_same_vectors(floats([d["embedding"] for d in json.loads(payload)["data"]]), tiny.encode(["a", "b c"]))
    big = json.dumps({"input": "x" * 70_000}).encode()
    status, _, payload = exchange(server, "POST", "/v1/embeddings", chunked(big[:40_000], big[40_000:]),
                                  {"Transfer-Encoding": "chunked"})
    assert status == 413 and "exceeds the limit of 65536" in json.loads(payload)["error"]["message"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serving(*options):
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "e5np", "serve", "-m", str(TINY_DIR), "--port", str(port),
                                "--max-queue-tokens", "100000000", *options], stderr=subprocess.PIPE, text=True)
    assert f"http://127.0.0.1:{port}/v1/embeddings" in process.stderr.readline()
    return process, type("Live", (), {"server_address": ("127.0.0.1", port)})()


def send_large_requests(live, n):
    """n requests of 2048 texts each, on threads, returned once the server has queued texts of one of them."""
    texts = [f"text {i} " + "word " * 100 for i in range(2048)]
    requests = [in_thread(request, live, "POST", "/v1/embeddings", {"input": texts}) for _ in range(n)]
    wait_until(lambda: metric(exchange(live, "GET", "/metrics")[2].decode(), "e5np_queue_requests") >= 1)
    return requests


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_lets_requests_in_flight_finish_and_exits_0(signal_name):
    import signal

    process, live = start_serving("--graceful-timeout", "120")
    try:
        requests = send_large_requests(live, 3)
        process.send_signal(getattr(signal, signal_name))
        assert process.wait(timeout=120) == 0
        for thread, result in requests:
            thread.join(30)
            status, body = result["value"]
            assert status == 200 and len(body["data"]) == 2048
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_graceful_timeout_bounds_the_shutdown():
    """Requests still running when --graceful-timeout ends get 503 (or find their connection closed), and the process
    still exits 0."""
    import signal

    process, live = start_serving("--graceful-timeout", "0.2")
    try:
        requests = send_large_requests(live, 6)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        for thread, result in requests:                                # answered, or cut at the bound
            thread.join(30)
            assert result.get("value", (200,))[0] in (200, 503)
            assert isinstance(result.get("error", ConnectionError()), (ConnectionError, http.client.HTTPException))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_without_the_extra_names_it(monkeypatch, capsys):
    import sys

    from e5np import cli

    monkeypatch.setitem(sys.modules, "uvicorn", None)                  # import uvicorn raises ImportError
    assert cli.main(["serve", "-m", str(TINY_DIR)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == 'e5np serve: needs the serve extra: pip install "e5np[serve]"'


@pytest.mark.parametrize("options, words", [
    (["--chunk-overlap", "8"], "e5np serve: --chunk-overlap is for --chunking 'mean'"),
    (["--chunking", "mean", "--chunk-overlap", "500"], "e5np serve: --chunk-overlap=500 must be less than"),
])
def test_serve_refuses_chunking_options_it_cannot_use(capsys, options, words):
    from e5np import cli

    assert cli.main(["serve", "-m", str(TINY_DIR), "--port", "0", *options]) == 2
    assert capsys.readouterr().err.startswith(words)


def test_parsing_needs_no_server_packages():
    """The request parsers are plain functions."""
    from e5np.server import RequestError, parse_request, parse_tei_request

    assert parse_request(b'{"input": "x", "input_type": "document"}', 16, 32) == (["x"], "float", None, "passage",
                                                                                 (None, None))
    assert parse_tei_request(b'{"inputs": ["a"], "truncate": true}', 16) == (["a"], None, True, None, (None, None))
    assert parse_request(b'{"input": "x", "chunking": "mean", "chunk_overlap": 9}', 16, 32)[4] == ("mean", 9)
    with pytest.raises(RequestError, match="'inputs' is required"):
        parse_tei_request(b"{}", 16)


def test_serve_bench_runs(capsys):
    """tools/serve_bench.py, briefly, on the tiny checkpoint: a row for each level, no errors, and (on Linux) the
    CPU its server's event loop and workers took, and the client's."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "serve_bench.py"
    spec = importlib.util.spec_from_file_location("serve_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--model", str(TINY_DIR), "--clients", "1,4", "--requests", "16", "--seconds", "30", "--no-mixed",
                "--ceiling-batch", "8", "--markdown"])
    out = capsys.readouterr().out
    assert "ceiling: one model.encode() (batch 8, " in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "query" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 1 x 1 query", "| 4 x 1 query"]
    cells = [[cell.strip() for cell in row.strip(" |").split("|")] for row in rows]
    assert all(len(row) == 13 and row[8] == "0" for row in cells), rows
    if sys.platform.startswith("linux"):                               # CPU in clock ticks: a few requests may take 0
        assert all(float(cell) >= 0 for row in cells for cell in row[9:]) and float(cells[0][12]) > 0, rows
        # The split itself: a thread's CPU is counted among the others, not as the main thread's (it is read while
        # the thread lives: an ended thread leaves /proc).
        burnt, done = threading.Event(), threading.Event()

        def burn():
            sum(i * i for i in range(3_000_000))
            burnt.set()
            done.wait(30)

        pid, before = os.getpid(), bench.thread_cpu(os.getpid())
        burner = threading.Thread(target=burn)
        burner.start()
        burnt.wait(30)
        main, others = bench.cpu_split(pid, before, bench.thread_cpu(pid))
        done.set()
        burner.join()
        assert others >= 0.05 and main < others / 2, (main, others)
