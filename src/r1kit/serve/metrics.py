"""Prometheus metrics at /metrics and the one log line per request.

A small hand-written text exposition (format 0.0.4) instead of the `prometheus_client` package: the server needs
three counters, two gauges and two histograms, all updated from the event-loop thread, which is a few dozen lines
and no new runtime dependency. Gauges that describe the engine (running, waiting) are read from the worker's
stats at scrape time, so they are never stale.

Request log line (logger "r1kit.serve.requests", INFO), one per API request when it has ended, streams included:

    request chatcmpl-1f2e... POST /v1/chat/completions 200 prompt=42 cached=0 completion=17 ttft=0.031s total=0.120s
"""
from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

request_log = logging.getLogger("r1kit.serve.requests")

# seconds; TTFT on a loaded CPU server runs from milliseconds to a minute
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, x: float) -> None:
        i = bisect.bisect_left(self.buckets, x)
        if i < len(self.counts):
            self.counts[i] += 1
        self.sum += x
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, cum = [], 0
        for le, c in zip(self.buckets, self.counts):
            cum += c
            out.append(f'{name}_bucket{{le="{le}"}} {cum}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum}", f"{name}_count {self.count}"]
        return out


@dataclass
class RequestRecord:
    """What one request reports when it ends: filled in by the route, read by the access middleware."""
    id: str = "-"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None  # time.perf_counter()
    prompt: str | None = None  # the last user message, kept only with --log-prompts
    started: float = field(default_factory=time.perf_counter)


class Metrics:
    """Counters and histograms of the API requests (updated on the event loop; scraped from it too)."""

    def __init__(self):
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> requests
        self.prompt_tokens = self.cached_tokens = self.completion_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)

    def record(self, endpoint: str, status: int, rec: RequestRecord, now: float) -> None:
        self.requests[endpoint, status] += 1
        self.prompt_tokens += rec.prompt_tokens
        self.cached_tokens += rec.cached_tokens
        self.completion_tokens += rec.completion_tokens
        if rec.first_token_at is not None:
            self.ttft.observe(rec.first_token_at - rec.started)
        if status == 200:
            self.latency.observe(now - rec.started)

    def exposition(self, running: int, waiting: int, in_flight: int) -> str:
        m = "r1kit_"
        lines = [f"# HELP {m}requests_total API requests answered, by endpoint and HTTP status.",
                 f"# TYPE {m}requests_total counter"]
        lines += [f'{m}requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())]
        for name, value, text in (("prompt_tokens", self.prompt_tokens, "Prompt tokens of finished requests."),
                                  ("prompt_cached_tokens", self.cached_tokens,
                                   "Prompt tokens whose KV the prefix cache supplied."),
                                  ("completion_tokens", self.completion_tokens, "Generated tokens.")):
            lines += [f"# HELP {m}{name}_total {text}", f"# TYPE {m}{name}_total counter", f"{m}{name}_total {value}"]
        hit_rate = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        for name, value, text in (("running_requests", running, "Samples decoding in engine slots."),
                                  ("waiting_requests", waiting, "Samples queued for an engine slot (queue depth)."),
                                  ("in_flight_requests", in_flight, "Samples admitted and not finished."),
                                  ("prefix_cache_hit_rate", hit_rate,
                                   "Share of prompt tokens served from the prefix cache, since start.")):
            lines += [f"# HELP {m}{name} {text}", f"# TYPE {m}{name} gauge", f"{m}{name} {value}"]
        for name, h, text in (("time_to_first_token_seconds", self.ttft, "Time from request to its first token."),
                              ("request_duration_seconds", self.latency, "Time from request to its last byte (200s).")):
            lines += [f"# HELP {m}{name} {text}", f"# TYPE {m}{name} histogram", *h.lines(m + name)]
        return "\n".join(lines) + "\n"


def log_line(method: str, path: str, status: int, rec: RequestRecord, now: float) -> str:
    ttft = f"{rec.first_token_at - rec.started:.3f}s" if rec.first_token_at is not None else "-"
    line = (f"request {rec.id} {method} {path} {status} prompt={rec.prompt_tokens} cached={rec.cached_tokens} "
            f"completion={rec.completion_tokens} ttft={ttft} total={now - rec.started:.3f}s")
    if rec.prompt is not None:
        line += f" prompt_text={rec.prompt!r}"
    return line
