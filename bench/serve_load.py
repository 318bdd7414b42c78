"""Load test of `r1kit serve` on loopback: concurrent streaming clients, continuous batching, memory afterwards.

    .venv/bin/python bench/serve_load.py [--model tiny] [--clients 32] [--requests 4] [--max-tokens 64]

The server runs as a subprocess (`r1kit.serve.serve.serve`, torch single-threaded) on a free port of 127.0.0.1; the
clients are asyncio coroutines in this process speaking minimal HTTP/1.1 over raw sockets (the load generator shares
the CPU with the server, so it must be cheap), each streaming `/v1/chat/completions` (SSE, include_usage) with
`ignore_eos` so every request generates exactly --max-tokens tokens. Prompts are distinct and shorter than one
64-token prefix-cache block, so the prefix cache stores nothing and the memory check sees only transient state.

Phases:
  1. warm-up: k concurrent short requests for every k up to --max-batch (so every decode batch size has run once),
     then --warmup-rounds rounds of the same load as phase 3, then the server's RSS baseline. Warming up raises RSS
     by ~110 MB that stays: native caches keyed by shape (oneDNN's primitive cache behind the engine's prepacked
     CPU Linear layers holds one entry per Linear shape x batch size seen; with ONEDNN_PRIMITIVE_CACHE_CAPACITY=0
     RSS plateaus within ~2 MB after one round, but decoding is 2.5x slower), not per-request state;
  2. single: 1 client x --requests requests, one after another -> tokens/s of a lone client;
  3. load: --clients clients x --requests requests each, all concurrent -> aggregate tokens/s, errors, time to
     first token and request latency percentiles; phases 2 and 3 alternate --repeats times and the best of each
     is reported (as bench/generate.py does: the 2 CPUs are shared with other jobs), errors are summed;
  4. idle: once /health shows nothing running, the server's RSS again (it must return to the baseline within
     --rss-tolerance-mb).

The server runs as `r1kit serve` does, with its request log (one line per request, to a temporary file here) and
/metrics; at the end the bench counts the log lines and reads the request counter from /metrics, so the figures
hold with both on.

An error is a non-200 answer, a stream without `data: [DONE]`, or a completion that is not --max-tokens long.
Aggregate tokens/s at least 6x a single client's shows requests are batched, not served one after another.
The last line of stdout is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def dechunk(raw: bytes) -> bytes:
    """The body of an HTTP/1.1 `Transfer-Encoding: chunked` response."""
    out, i = [], 0
    while True:
        j = raw.index(b"\r\n", i)
        size = int(raw[i:j].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[j + 2:j + 2 + size])
        i = j + 2 + size + 2


async def one_request(host: str, port: int, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed chat completion over a raw socket: a minimal HTTP/1.1 client, so the load generator (which
    shares the CPU with the server) costs little; the SSE body is parsed once the response is complete."""
    body = json.dumps({"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    t0 = time.perf_counter()
    ttft = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (host.encode(), len(body)) + body)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        parts, events = [], 0
        while data := await reader.read(65536):
            parts.append(data)
            if ttft is None:
                events += data.count(b"data: ")
                if events > 1:  # the first event is the role chunk
                    ttft = time.perf_counter() - t0
        writer.close()
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    raw = b"".join(parts)
    if status != 200:
        return {"ok": False, "error": f"HTTP {status}: {raw[:200]!r}"}
    text = (dechunk(raw) if b"chunked" in head.lower() else raw).decode()
    lines = [ln for ln in text.split("\n") if ln.startswith("data: ")]
    done = bool(lines) and lines[-1] == "data: [DONE]"
    usage = next((json.loads(ln[6:])["usage"] for ln in reversed(lines) if '"usage"' in ln), None)
    errors = [ln for ln in lines if ln.startswith('data: {"error"')]
    tokens = usage["completion_tokens"] if usage else 0
    ok = done and tokens == max_tokens and not errors
    return {"ok": ok, "tokens": tokens, "ttft": ttft, "latency": time.perf_counter() - t0,
            "error": None if ok else f"done={done} tokens={tokens} {errors[:1]}"}


async def run_clients(url: str, model: str, clients: int, requests: int, max_tokens: int, tag: str) -> dict:
    host, port = url.removeprefix("http://").split(":")

    async def worker(c: int):
        # the same prompt length in every phase: the warm-up then sees every prefill shape the load uses
        return [await one_request(host, int(port), model, f"{tag} {c:02d}.{r:02d}: count the stars.", max_tokens)
                for r in range(requests)]
    t0 = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(worker(c) for c in range(clients))) for r in rs]
    wall = time.perf_counter() - t0
    good = [r for r in results if r["ok"]]
    tokens = sum(r.get("tokens", 0) for r in results)
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(good), "tokens": tokens,
            "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": round(1e3 * pct([r["ttft"] for r in good if r["ttft"]], 0.5), 1),
            "ttft_p95_ms": round(1e3 * pct([r["ttft"] for r in good if r["ttft"]], 0.95), 1),
            "latency_p50_s": round(pct([r["latency"] for r in good], 0.5), 3),
            "latency_p95_s": round(pct([r["latency"] for r in good], 0.95), 3),
            "first_errors": [r["error"] for r in results if not r["ok"]][:3]}


def wait_idle(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = httpx.get(url + "/health", timeout=10).json()
        if not (h["running"] or h["waiting"] or h["in_flight"]) or time.monotonic() > deadline:
            return h
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="model spec for r1kit serve (a preset = random weights)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    ap.add_argument("--repeats", type=int, default=3, help="single/load phase pairs; the best of each is reported")
    ap.add_argument("--warmup-rounds", type=int, default=1, help="rounds of the full load before the RSS baseline")
    ap.add_argument("--rss-tolerance-mb", type=float, default=16.0)
    args = ap.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    name = Path(args.model.rstrip("/")).name
    code = (f"from r1kit.serve.serve import serve; serve({args.model!r}, port={port}, max_batch={args.max_batch}, "
            f"max_seq_len=512, threads={args.threads}, max_queue={args.clients * 2})")
    import tempfile

    server_log = tempfile.TemporaryFile()  # the request log: a file, since a pipe nobody drains would fill up
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=server_log)

    def log_tail() -> str:
        server_log.seek(0)
        return server_log.read().decode(errors="replace")[-2000:]
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {log_tail()}")
            time.sleep(0.2)
        pid = server.pid
        rss_start = rss_mb(pid)

        for k in range(1, args.max_batch + 1):  # every decode batch size once (native caches are keyed by shape)
            asyncio.run(run_clients(url, name, k, 1, 4, "warm-"))
            wait_idle(url)
        for _ in range(args.warmup_rounds):
            warm = asyncio.run(run_clients(url, name, args.clients, args.requests, args.max_tokens, "warm-"))
            wait_idle(url)
        time.sleep(1.0)
        rss_base = rss_mb(pid)
        print(f"warm-up: {args.warmup_rounds} x {warm['requests']} requests, {warm['errors']} errors; "
              f"RSS {rss_start:.0f} MB at start, "
              f"{rss_base:.0f} MB baseline")

        singles, loads = [], []
        for rep in range(args.repeats):  # interleaved, best of each: the CPU is shared with other jobs
            singles.append(asyncio.run(run_clients(url, name, 1, args.requests, args.max_tokens, "solo-")))
            loads.append(asyncio.run(run_clients(url, name, args.clients, args.requests, args.max_tokens, "load-")))
            health = wait_idle(url)
            print(f"repeat {rep}: single client {singles[-1]['tokens_per_s']} tok/s, {args.clients} clients "
                  f"{loads[-1]['tokens_per_s']} tok/s, {singles[-1]['errors'] + loads[-1]['errors']} errors")
        single = max(singles, key=lambda r: r["tokens_per_s"])
        load = max(loads, key=lambda r: r["tokens_per_s"])
        errors = sum(r["errors"] for r in singles + loads)
        print(f"single client: {single['tokens']} tokens in {single['wall_s']} s = {single['tokens_per_s']} tok/s, "
              f"TTFT p50 {single['ttft_p50_ms']} ms")
        time.sleep(1.0)
        rss_after = rss_mb(pid)
        speedup = load["tokens_per_s"] / single["tokens_per_s"]
        print(f"{args.clients} clients x {args.requests} requests: {load['requests']} requests, {errors} errors "
              f"in all repeats, {load['tokens']} tokens in {load['wall_s']} s = {load['tokens_per_s']} tok/s "
              f"({speedup:.1f}x one client); TTFT p50 {load['ttft_p50_ms']} ms p95 {load['ttft_p95_ms']} ms; "
              f"latency p50 {load['latency_p50_s']} s p95 {load['latency_p95_s']} s")
        if errors:
            print("errors:", [e for r in singles + loads for e in r["first_errors"]][:5])
        metrics = httpx.get(url + "/metrics").text
        metric_requests = sum(float(ln.rsplit(" ", 1)[1]) for ln in metrics.splitlines()
                              if ln.startswith('r1kit_requests_total{endpoint="/v1/chat/completions"'))
        server_log.seek(0)
        log_lines = sum(b" request chatcmpl-" in ln for ln in server_log.read().splitlines())
        print(f"request log: {log_lines} lines; /metrics: {metric_requests:.0f} chat requests counted")
        rss_delta = rss_after - rss_base
        returned = rss_delta <= args.rss_tolerance_mb
        print(f"server RSS: baseline {rss_base:.1f} MB, after the load {rss_after:.1f} MB ({rss_delta:+.1f} MB, "
              f"tolerance {args.rss_tolerance_mb} MB): {'returned' if returned else 'NOT returned'}; "
              f"idle health {health}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    out = {"bench": "serve_load", "model": args.model, "clients": args.clients, "requests_per_client": args.requests,
           "max_tokens": args.max_tokens, "max_batch": args.max_batch, "server_threads": args.threads,
           "repeats": args.repeats, "errors": errors, "single_tokens_per_s": single["tokens_per_s"],
           "aggregate_tokens_per_s": load["tokens_per_s"], "speedup": round(speedup, 2),
           "ttft_p50_ms": load["ttft_p50_ms"], "ttft_p95_ms": load["ttft_p95_ms"],
           "latency_p50_s": load["latency_p50_s"], "latency_p95_s": load["latency_p95_s"],
           "rss_start_mb": round(rss_start, 1), "rss_baseline_mb": round(rss_base, 1),
           "rss_after_mb": round(rss_after, 1), "rss_delta_mb": round(rss_delta, 1), "rss_returned": returned,
           "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
