"""The OpenAI-compatible server: the real openai client, raw HTTP for errors, and a bounded load test."""

import http.client
import json
import socket
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
