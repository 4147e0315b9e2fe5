#!/usr/bin/env python
"""Load test of ``nlpkit serve``: concurrent clients against a NER model on 127.0.0.1, batching on and off.

For each setting a fresh ``nlpkit serve`` process is started on a free loopback port. 32 clients
(asyncio + httpx, one connection each) send 20,000 single-sentence requests in all, each the text of
one CoNLL-2003 valid sentence; every answer must be 200 and equal (tags exactly, scores within 1e-3)
to ``nlpkit.load(RUN).predict`` of that sentence in this process, else it counts as an error.
Reported: requests/s over the whole run, p50/p99 latency (send to answer, as a client sees it), errors,
and the mean batch size the server's access log recorded. 64 warm-up requests before each timed run
are not counted.

Then, against the batching server, 1,000 malformed requests (bad JSON, wrong types, unknown task, too
many inputs, a text or a body over the limits, a record without the fields): every one must be answered
4xx, and afterwards the server must still answer correctly. Last, SIGTERM: the server must drain and
exit 0. The load is bounded: a fixed number of requests and --time-limit seconds per phase, after which
the run stops by itself and fails.

The two sides share the machine's cores (clients and server on one host), so requests/s is a property
of this whole setting, not of the server alone.

    python benchmarks/serve_load.py                    # tiny preset trained on CoNLL-2003, 20,000 requests
    python benchmarks/serve_load.py --checkpoint RUN   # any NER run folder
    python benchmarks/serve_load.py --quick            # tiny random BERT, 300 requests, 100 malformed
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

HOST = "127.0.0.1"  # loopback only: this benchmark never sends traffic off the machine


def train_checkpoint(args: argparse.Namespace, root: Path) -> Path:
    """Train (once; cached) the NER model the benchmark serves."""
    backbone = C.tiny_bert_folder() if args.quick else args.backbone
    name = Path(backbone).name
    out = C.CACHE / "serve-model" / f"{name}-{args.train_sentences}-{args.train_steps}"
    if (out / "best" / "nlpkit.json").is_file():
        print(f"model: cached nlpkit checkpoint {out / 'best'}")
        return out / "best"
    files = C.conll_slices(root, args.train_sentences, 128 if args.quick else 500)
    cmd = [sys.executable, "-m", "nlpkit", "train", "--task", "ner", "--data", f"train={files['train']}",
           "--data", f"dev={files['dev']}", "--backbone", backbone, "--max-steps", str(args.train_steps),
           "--batch-size", "32", "--lr", "5e-4", "--seed", "42", "--output-dir", str(out), "--no-progress",
           "--set", f"trainer.eval_every={args.train_steps}", "--set", f"logging.log_every={args.train_steps}"]
    print("model: training the nlpkit checkpoint once:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **C.OFFLINE_ENV})
    return out / "best"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """One ``nlpkit serve`` process; its stderr (the access log) goes to a file read afterwards."""

    def __init__(self, ckpt: Path, log: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log
        self.log = open(log, "w")
        cmd = [sys.executable, "-m", "nlpkit", "serve", str(ckpt), "--host", HOST, "--port", str(self.port), *extra]
        print("server:", " ".join(cmd[2:]), flush=True)
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=self.log, env={**os.environ, **C.OFFLINE_ENV})

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"the server exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        sys.exit(f"the server was not ready after {timeout} s; log: {self.log_path}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then the exit status (None: it had to be killed)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def batch_sizes(self) -> list[int]:
        return [int(m) for m in re.findall(r"batch=(\d+)", self.log_path.read_text())]


def same(got: Any, want: Any, tol: float = 1e-3) -> bool:
    """Equal, floats within ``tol`` (a sentence batched with others is padded differently)."""
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and isinstance(want, (int, float)) and abs(got - want) <= tol
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same(got[k], want[k], tol) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(same(x, y, tol) for x, y in zip(got, want))
    return got == want


async def load(url: str, texts: list[str], reference: list[Any], n_requests: int, clients: int,
               time_limit: float) -> dict[str, Any]:
    """``clients`` connections send ``n_requests`` in all; latencies of the 200s, errors of the rest."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.monotonic() + time_limit

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def client() -> None:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) as c:
            await send(c)

    async def send(c: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < n_requests and time.monotonic() < deadline:
            i = issued
            issued += 1
            k = i % len(texts)
            t0 = time.perf_counter()
            try:
                r = await c.post(f"{url}/v1/ner/predict", json=texts[k])
            except httpx.HTTPError as exc:
                error(type(exc).__name__)
                continue
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                error(f"HTTP {r.status_code}")
            elif not same(r.json(), {"input": texts[k], "prediction": reference[k]}):
                error("wrong answer")
            else:
                latencies.append(dt)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))  # one connection per client, reused
    wall = time.perf_counter() - start
    done = len(latencies) + sum(errors.values())
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {"requests": done, "asked": n_requests, "clients": clients, "wall_s": wall,
            "requests_per_s": done / wall if wall else 0.0, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "errors": sum(errors.values()), "error_kinds": errors, "finished": done == n_requests}


def malformed_requests(n: int) -> list[tuple[str, dict[str, Any], str]]:
    """(path, httpx keyword arguments, what is wrong) cycling over the kinds of bad request."""
    kinds = [
        ("/v1/ner/predict", {"content": b"{not json"}, "bad JSON"),
        ("/v1/ner/predict", {"content": b""}, "empty body"),
        ("/v1/ner/predict", {"json": 12345}, "a number"),
        ("/v1/ner/predict", {"json": [None, "x"]}, "null input"),
        ("/v1/ner/predict", {"json": []}, "empty list"),
        ("/v1/no-such-task/predict", {"json": "Paris"}, "unknown task"),
        ("/v1/ner/predict", {"json": ["Paris ."] * 65}, "too many inputs"),
        ("/v1/ner/predict", {"json": "word " * 2001}, "text too long"),
        ("/v1/ner/predict", {"content": b'"' + b"x" * 1_000_001 + b'"'}, "body too large"),
        ("/v1/ner/predict", {"json": {"tokens": 7}}, "record with the wrong field type"),
        ("/v1/ner/predict", {"json": "   "}, "blank text"),
        ("/v1/ner/predict", {"content": "\"caf\xe9\"".encode("latin-1")}, "not UTF-8"),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


async def send_malformed(url: str, n: int, clients: int, time_limit: float) -> dict[str, Any]:
    import httpx

    statuses: dict[int, int] = {}
    bad: list[str] = []
    todo = malformed_requests(n)
    deadline = time.monotonic() + time_limit

    async def client(c: httpx.AsyncClient) -> None:
        while todo and time.monotonic() < deadline:
            path, kwargs, what = todo.pop()
            try:
                r = await c.post(url + path, **kwargs)
            except httpx.HTTPError as exc:
                bad.append(f"{what}: {type(exc).__name__}")
                continue
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if not 400 <= r.status_code < 500 and len(bad) < 20:
                bad.append(f"{what}: HTTP {r.status_code}")

    async with httpx.AsyncClient(timeout=60) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    answered_4xx = sum(v for k, v in statuses.items() if 400 <= k < 500)
    return {"sent": n - len(todo), "asked": n, "statuses": statuses, "answered_4xx": answered_4xx,
            "not_4xx": bad, "all_4xx": answered_4xx == n}


def main(argv: list[str] | None = None) -> int:
    C.offline()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="an nlpkit NER checkpoint or run folder (default: train one, cached)")
    p.add_argument("--backbone", default="tiny", help="backbone of the trained model (default: the tiny preset)")
    p.add_argument("--quick", action="store_true", help="tiny random BERT, 300 requests, 100 malformed")
    p.add_argument("--requests", type=int, default=None, help="per setting (default 20000; 300 with --quick)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--malformed", type=int, default=None, help="default 1000 (100 with --quick)")
    p.add_argument("--max-batch-size", type=int, default=32, help="batching on: the server's --max-batch-size")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="batching on: the server's --max-wait-ms")
    p.add_argument("--sentences", type=int, default=None, help="distinct sentences cycled (default 1000; 100 quick)")
    p.add_argument("--time-limit", type=float, default=900, help="seconds per phase before the run stops and fails")
    p.add_argument("--train-sentences", type=int, default=None, help="default 2000 (256 with --quick)")
    p.add_argument("--train-steps", type=int, default=None, help="default 200 (20 with --quick)")
    p.add_argument("--data-root")
    p.add_argument("--json")
    args = p.parse_args(argv)
    args.requests = args.requests or (300 if args.quick else 20_000)
    args.malformed = args.malformed or (100 if args.quick else 1000)
    args.sentences = args.sentences or (100 if args.quick else 1000)
    args.train_sentences = args.train_sentences or (256 if args.quick else 2000)
    args.train_steps = args.train_steps or (20 if args.quick else 200)

    import nlpkit
    from nlpkit.engine import checkpoint

    info = C.device_info()
    print(C.device_line(info))
    print(C.versions())
    root = C.data_root(args.data_root)
    ckpt = checkpoint.resolve(args.checkpoint) if args.checkpoint else checkpoint.resolve(train_checkpoint(args, root))
    sentences = C.read_conll_sentences(root / "conll2003" / "valid.txt.gz")[: args.sentences]
    texts = [" ".join(words) for words, _ in sentences]
    reference = nlpkit.load(ckpt, device="cpu").predict(texts, task="ner")
    print(f"model {ckpt}; inputs: {len(texts)} CoNLL-2003 valid sentences, cycled; {args.clients} clients; "
          f"{args.requests} requests per setting", flush=True)

    logs = C.CACHE / "serve-logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = [("batching on", ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]),
                ("batching off", ["--max-batch-size", "1", "--max-wait-ms", "0"])]
    results: dict[str, Any] = {}
    ok = True
    for name, flags in settings:
        server = Server(ckpt, logs / f"{name.replace(' ', '-')}.log", *flags)
        try:
            server.wait_ready()
            # warm-up, not counted: the first calls allocate and pick kernels
            asyncio.run(load(server.url, texts, reference, 2 * args.clients, args.clients, args.time_limit))
            before = len(server.batch_sizes())
            r = asyncio.run(load(server.url, texts, reference, args.requests, args.clients, args.time_limit))
            sizes = server.batch_sizes()[before:]
            r["mean_batch"] = sum(sizes) / len(sizes) if sizes else None
            r["max_batch"] = max(sizes) if sizes else None
            if name == "batching on":
                r["malformed"] = asyncio.run(send_malformed(server.url, args.malformed, args.clients, args.time_limit))
                r["after_malformed"] = asyncio.run(load(server.url, texts, reference, min(200, len(texts) * 2),
                                                        args.clients, args.time_limit))
        finally:
            r["exit_status"] = server.stop()
        results[name] = r
        ok &= r["finished"] and r["errors"] == 0 and r["exit_status"] == 0
        print(f"   {name}: {r['requests']} requests in {r['wall_s']:.1f} s, {r['errors']} errors "
              f"{r['error_kinds'] or ''}; server exit status {r['exit_status']}", flush=True)

    print()
    print(C.markdown_table(
        ["setting", "requests", "clients", "requests/s", "p50 ms", "p99 ms", "errors", "mean batch", "max batch"],
        [[name, r["requests"], r["clients"], r["requests_per_s"], r["p50_ms"], r["p99_ms"], r["errors"],
          r["mean_batch"], r["max_batch"]] for name, r in results.items()]))
    m, after = results["batching on"]["malformed"], results["batching on"]["after_malformed"]
    ok &= m["all_4xx"] and after["finished"] and after["errors"] == 0
    print()
    print(f"malformed: {m['answered_4xx']}/{m['asked']} answered 4xx (statuses {dict(sorted(m['statuses'].items()))})"
          + (f"; NOT 4xx: {m['not_4xx']}" if m["not_4xx"] else ""))
    print(f"after them: {after['requests'] - after['errors']}/{after['asked']} requests answered correctly")
    print(f"graceful shutdown (SIGTERM): exit status {[r['exit_status'] for r in results.values()]}")
    print("result:", "PASS" if ok else "FAIL")
    C.save_json(args.json, {"device": info, "args": vars(args), "checkpoint": str(ckpt), "results": results})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
