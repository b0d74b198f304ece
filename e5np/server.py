"""An OpenAI-compatible embeddings server on the standard library: POST /v1/embeddings, GET /health.

Each request is read and answered on its own thread (ThreadingHTTPServer); every request's texts take the path
model.encode() takes (Model.embed), so their batches queue for the process's one pool of workers.
Bad requests get OpenAI-style error bodies ({"error": {"message", "type", "param", "code"}}) and the
server carries on.
"""

import base64
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from .model import TruncationError
from .tokenizer import lone_surrogate


class RequestError(Exception):
    def __init__(self, status, message, param=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind


def parse_request(body, max_inputs, dim):
    """The texts and encoding format of an embeddings request body for a model of dim-sized vectors; RequestError
    if it is not one."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:                                             # [[[[...]]]] deeper than Python's stack
        raise RequestError(400, "request body is nested too deeply to parse") from None
    if not isinstance(request, dict):
        raise RequestError(400, "request body must be a JSON object")
    if "input" not in request:
        raise RequestError(400, "'input' is required", param="input")
    texts = request["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise RequestError(400, "'input' must be a string or a non-empty array of strings", param="input")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(400, f"'input[{i}]' must be a string, got {type(text).__name__} "
                                    "(token arrays are not supported)", param="input")
        if (where := lone_surrogate(text)) is not None:                # from a JSON escape such as "\ud800"
            raise RequestError(400, f"'input[{i}]' is not valid Unicode: a lone surrogate (U+{where[1]:04X}) at "
                                    f"offset {where[0]}", param="input")
    if len(texts) > max_inputs:
        raise RequestError(413, f"'input' has {len(texts)} items; the limit is {max_inputs}", param="input")
    encoding = request.get("encoding_format")
    encoding = "float" if encoding is None else encoding               # null, as some clients send it: the default
    if encoding not in ("float", "base64"):
        raise RequestError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    dimensions = request.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions != dim):
        raise RequestError(400, f"'dimensions' must be {dim}, the model's size, or left out: e5np does not shorten "
                                "vectors", param="dimensions")
    return texts, encoding, request.get("model")


def embeddings_response(model, texts, encoding, model_name, truncation="ignore"):
    try:                                # with the default prompt a checkpoint may name, as model.encode() adds it
        embedded = model.embed(texts, truncation=truncation)
    except TruncationError as e:                                       # as OpenAI's API refuses over-long input
        raise RequestError(400, f"'input[{e.indices[0]}]' is longer than the model's limit of {model.max_length} "
                                f"tokens ({len(e.indices)} input(s) are); shorten it, or start the server with "
                                "--truncation ignore to embed its first tokens", param="input") from None
    vectors, tokens = embedded.vectors, int(embedded.token_counts.sum())     # [n, H] float32
    data = []
    for i, vector in enumerate(vectors):
        if encoding == "base64":  # little-endian float32 bytes, as the OpenAI API returns
            embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {"object": "list", "data": data, "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def make_handler(model, model_name, max_body_bytes, max_inputs, idle_timeout, truncation):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "e5np"
        # How long a connection's thread waits for the client's next bytes: an idle keep-alive connection,
        # or a body that stops short of its Content-Length, is closed then instead of holding a thread forever.
        timeout = idle_timeout

        def log_message(self, format, *args):  # quiet by default; errors still reach stderr below
            pass

        def send_json(self, status, payload):
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_error_json(self, error):
            self.send_json(error.status, {"error": {"message": str(error), "type": error.kind,
                                                    "param": error.param, "code": None}})

        def do_GET(self):
            if self.path.rstrip("/") == "/health":
                self.send_json(200, {"status": "ok", "model": model_name, "dim": model.dim})
            elif self.path.rstrip("/") == "/v1/models":
                self.send_json(200, {"object": "list", "data": [{"id": model_name, "object": "model",
                                                                 "owned_by": "e5np"}]})
            else:
                self.send_error_json(RequestError(404, f"no route GET {self.path}", kind="not_found_error"))

        def do_POST(self):
            try:
                if self.path.rstrip("/") != "/v1/embeddings":
                    self.discard_body()
                    raise RequestError(404, f"no route POST {self.path}", kind="not_found_error")
                length = self.content_length()
                if length > max_body_bytes:
                    self.close_connection = True  # do not read a body we refuse
                    raise RequestError(413, f"request body of {length} bytes exceeds the limit of {max_body_bytes}")
                texts, encoding, _ = parse_request(self.rfile.read(length), max_inputs, model.dim)
                self.send_json(200, embeddings_response(model, texts, encoding, model_name, truncation))
            except RequestError as e:
                self.send_error_json(e)
            except (TimeoutError, socket.timeout):  # the body stopped short of its Content-Length (3.9: not one)
                self.close_connection = True
                self.send_error_json(RequestError(408, f"the request body did not arrive within {self.timeout} s"))
            except Exception as e:  # a bug, not the client's fault: report it and keep serving
                print(f"e5np serve: internal error: {e!r}", file=sys.stderr)
                self.send_error_json(RequestError(500, "internal error", kind="server_error"))

        def content_length(self):
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                raise RequestError(411, "a Content-Length header is required") from None
            if length < 0:
                raise RequestError(400, "negative Content-Length")
            return length

        def discard_body(self):
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = 0
            if 0 < length <= max_body_bytes:
                self.rfile.read(length)
            elif length:
                self.close_connection = True

    return Handler


def make_server(model, host="127.0.0.1", port=8080, model_name=None, max_body_bytes=4 * 2**20, max_inputs=2048,
                idle_timeout=60, truncation="ignore"):
    """A ready EmbeddingServer (port 0 picks a free one); call serve_forever() or use serve_in_thread().
    Batches run on model.threads workers (e5np.load(threads=N); `e5np serve --threads N`).
    idle_timeout: seconds a connection may stay silent (between requests, or mid-body) before it is closed.
    truncation: an input longer than the model's max_length is embedded from its first tokens ("ignore"),
    or the request gets 400 naming it ("error")."""
    if truncation not in ("ignore", "error"):
        raise ValueError(f"truncation must be 'ignore' or 'error', got {truncation!r}")
    handler = make_handler(model, model_name or str(model.name), max_body_bytes, max_inputs, idle_timeout,
                           truncation)
    return EmbeddingServer((host, port), handler, model)


class EmbeddingServer(ThreadingHTTPServer):
    """One thread per connection to read and answer requests; the process's workers (model.threads of them, each
    with one BLAS thread; see runtime.workers) embed every request's batches. One client sending large requests
    gets all the cores, and many clients at once queue for them instead of running more threads than cores, with
    any encode() the process calls itself."""

    daemon_threads = True

    def __init__(self, address, handler, model):
        super().__init__(address, handler)
        self.model = model


def serve_in_thread(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def float_vectors_from_base64(items):
    """Decode base64 embeddings (for clients and tests)."""
    return np.stack([np.frombuffer(base64.b64decode(item), dtype="<f4") for item in items])
