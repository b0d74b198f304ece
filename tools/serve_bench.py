"""Load on a running `e5np serve`: concurrent clients of single-query requests, and a mixed-size load.

    python tools/serve_bench.py --model DIR [--url http://127.0.0.1:8080] [--clients 1,8,32,128,256]
                                [--requests 400] [--seconds 20] [--ceiling-batch 32] [--markdown]

Without --url it starts `e5np serve -m DIR --port <free>` itself (127.0.0.1 only) and stops it at the end; with
--url it drives that server (any OpenAI-compatible one, the model there should be DIR's). Each client holds one
keep-alive connection and sends its next request when the last is answered; a level stops after --requests
requests (at least 4 per client) or --seconds, whichever comes first. Errors count every answer that is not 200
and every failed connection (resets included). The mixed load: requests of 1-32 texts of 3-120 words.
The ceiling: one model.encode() of the same kind of texts in this process while the server is idle (batch 32, the
engine's threads), run just before and just after each level (their mean; the machine's other load moves both
alike): the texts/s a server that batched perfectly, at no cost of its own, would reach. --ceiling-batch 16 makes
it the ceiling of batches as large as 32 waiting clients can fill on two workers.
The client runs in this process on the same cores as the server, as a load generator on the machine would.
Where the server was started here (Linux), each row also splits the CPU time it took: its event loop's thread
(HTTP, JSON, tokenizing: ms per request), its other threads (the workers embedding, the batcher: ms per text),
beside the ceiling's ms of CPU per text and the client's per request. CPU per text, unlike texts/s, moves little
with the machine's other load, so it shows where a ratio under the ceiling goes.
"""

import argparse
import asyncio
import functools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import machine  # noqa: E402

import e5np  # noqa: E402

WORDS = ("the a cat dog model vector search query passage embedding token attention server batch fast slow "
         "question answer protein marathon city river mountain paper index number result learning network").split()


def queries(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + f" {i}" for i in range(n)]


def mixed_requests(n, seed=1):
    rng = random.Random(seed)
    return [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 120))) for _ in range(rng.choice(
        (1, 1, 1, 2, 4, 8, 16, 32)))] for _ in range(n)]


async def http_post(reader, writer, host, path, payload):
    body = json.dumps(payload).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


async def run_level(host, port, clients, bodies, total, seconds):
    """(latencies of 200 answers, statuses of others / errors, wall seconds, texts answered)."""
    latencies, errors, texts_done, sent = [], [], [0], [0]
    deadline = time.monotonic() + seconds

    async def client(k):
        reader = writer = None
        while sent[0] < total and time.monotonic() < deadline:
            i = sent[0]
            sent[0] += 1
            payload = bodies[i % len(bodies)]
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                started = time.monotonic()
                status = await http_post(reader, writer, host, "/v1/embeddings", payload)
                if status == 200:
                    latencies.append(time.monotonic() - started)
                    texts_done[0] += len(payload["input"]) if isinstance(payload["input"], list) else 1
                else:
                    errors.append(status)
            except (OSError, asyncio.IncompleteReadError) as e:
                errors.append(type(e).__name__)
                writer = None
        if writer is not None:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, errors, time.monotonic() - started, texts_done[0]


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, extra):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "e5np", "serve", "-m", str(model_dir), "--port", str(port),
                                *extra], stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    process.stderr.readline()
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


def ceiling_run(model, texts, batch_size=32):
    """(texts/s, CPU seconds per text) of one model.encode() of texts in batches of batch_size (after a warm-up)."""
    model.encode(texts[:32], batch_size=batch_size)
    started, cpu = time.monotonic(), time.process_time()
    model.encode(texts, batch_size=batch_size)
    return len(texts) / (time.monotonic() - started), (time.process_time() - cpu) / len(texts)


def thread_cpu(pid):
    """{thread id: CPU seconds so far} of process pid's threads, from Linux's /proc; {} where there is none."""
    seconds = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return seconds
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()             # after the command, which may hold spaces
        except OSError:                                                # the thread ended
            continue
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime
    return seconds


def cpu_split(pid, before, after):
    """(CPU seconds of the main thread, which runs the event loop, and of the others) between two thread_cpu()."""
    loop = after.get(pid, 0) - before.get(pid, 0)
    others = sum(t - before.get(tid, 0) for tid, t in after.items() if tid != pid)
    return loop, others


def measured_level(host, port, clients, bodies, total, seconds, pid):
    """run_level's results, and (loop, other threads, client) CPU seconds over it (None without a pid)."""
    before, client = thread_cpu(pid) if pid else {}, time.process_time()
    lat, errors, wall, done = asyncio.run(run_level(host, port, clients, bodies, total, seconds))
    client = time.process_time() - client
    split = (*cpu_split(pid, before, thread_cpu(pid)), client) if before else None
    return lat, errors, wall, done, split


def mean_of(before, after):
    """The mean of two ceiling_run() results, each (texts/s, CPU seconds per text)."""
    return tuple((a + b) / 2 for a, b in zip(before, after))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (for the ceiling, and the server)")
    parser.add_argument("--url", help="a running server; default: start `e5np serve` here")
    parser.add_argument("--server-args", default="", help="extra `e5np serve` options when starting it")
    parser.add_argument("--clients", default="1,8,32,128,256")
    parser.add_argument("--requests", type=int, default=400, help="requests per level (at least 4 per client)")
    parser.add_argument("--seconds", type=float, default=20, help="at most this long per level")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-size load")
    parser.add_argument("--ceiling-batch", type=int, default=32, help="the ceiling's encode() batch size (32)")
    args = parser.parse_args(argv)
    ceiling = functools.partial(ceiling_run, batch_size=args.ceiling_batch)

    model = e5np.load(args.model)
    levels = [int(c) for c in args.clients.split(",")]
    texts = queries(max(args.requests, 4 * max(levels)))
    mixed_texts = [t for batch in mixed_requests(200) for t in batch]

    process = None
    if args.url:
        url = urlparse(args.url)
        host, port = url.hostname, url.port
    else:
        process, port = start_server(args.model, args.server_args.split())
        host = "127.0.0.1"
    try:
        single = [{"input": text} for text in texts]
        pid = process.pid if process is not None else None
        asyncio.run(run_level(host, port, 4, single[:16], 16, 30))                    # warm-up
        rows = []
        before = ceiling(model, texts[:256])
        for clients in levels:
            total = max(args.requests, 4 * clients)
            *level, split = measured_level(host, port, clients, single, total, args.seconds, pid)
            after = ceiling(model, texts[:256])
            rows.append((f"{clients} x 1 query", mean_of(before, after), *level, split))
            before = after
        if not args.no_mixed:
            mixed = [{"input": batch} for batch in mixed_requests(200)]
            before = ceiling(model, mixed_texts)
            *level, split = measured_level(host, port, 16, mixed, 200, args.seconds, pid)
            rows.append(("16 x mixed (1-32 texts)", mean_of(before, ceiling(model, mixed_texts)), *level, split))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)

    print(machine.describe())
    header = ("| load | requests | req/s | texts/s | ceiling texts/s | x ceiling | p50 ms | p99 ms | errors "
              "| loop CPU ms/req | workers CPU ms/text | ceiling CPU ms/text | client CPU ms/req |")
    print(header if args.markdown else header.replace("|", " "))
    if args.markdown:
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for name, (top, top_cpu), lat, errors, wall, done, split in rows:
        ok, kinds = len(lat), {}
        for e in errors:
            kinds[e] = kinds.get(e, 0) + 1
        error_text = ", ".join(f"{v} x {k}" for k, v in sorted(kinds.items(), key=str)) or "0"
        answered = ok + len(errors)
        if split and answered and done:
            loop, others, client = split
            cpu_text = (f"{1000 * loop / answered:.2f} | {1000 * others / done:.2f} | {1000 * top_cpu:.2f} | "
                        f"{1000 * client / answered:.2f}")
        else:
            cpu_text = "- | - | - | -"
        print(f"| {name} | {answered} | {ok / wall:.1f} | {done / wall:.1f} | {top:.1f} | "
              f"{done / wall / top:.2f} | {1000 * statistics.median(lat) if lat else float('nan'):.1f} | "
              f"{1000 * percentile(lat, 99):.1f} | {error_text} | {cpu_text} |")
    print(f"\nceiling: one model.encode() (batch {args.ceiling_batch}, threads={model.threads}) of 256 of the same "
          f"queries, or of the mixed load's {len(mixed_texts)} texts, just before and just after each level (the mean)")
    if any(row[-1] for row in rows):
        print("CPU: the server's main thread (its event loop) per request answered, its other threads (workers, "
              "batcher) per text embedded, the ceiling's encode() per text, this process's client per request")


if __name__ == "__main__":
    main()
