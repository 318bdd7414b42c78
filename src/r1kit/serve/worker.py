"""The engine worker: one thread owns the engine, and requests reach it through queues.

Requests arrive through a deque; after every `engine.step()` the worker hands each request its new tokens with one
`loop.call_soon_threadsafe`, into that request's asyncio.Queue. All requests share the engine's continuous batch.
`stats()` publishes what /health and /metrics show; the engine's slot and queue counts come from `Engine.load()`.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, replace

from r1kit.engine.engine import Engine
from r1kit.engine.sampling import SamplingParams

log = logging.getLogger("r1kit.serve")


@dataclass(frozen=True)
class WorkerStats:
    running: int = 0  # samples in engine slots
    waiting: int = 0  # samples queued in the engine for a slot
    max_running: int = 0  # the most samples decoded together so far
    steps: int = 0  # engine steps run
    alive: bool = False  # the worker thread runs
    tracked: int = 0  # engine requests the worker still routes tokens for (0 when idle: nothing left behind)


class Job:
    """One HTTP request's n samples of one prompt. `queue` receives, per engine step, a list of
    (choice index, token, Result or None) tuples, or a string: "error: ..." or "disconnected"."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, n: int):
        self.prompt_ids, self.params, self.n = prompt_ids, params, n
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[int] = []  # engine request ids, set by the worker on admission
        self.open = set(range(n))  # choices not finished yet (as the endpoint sees them)
        self.cached = 0  # prompt tokens the prefix cache supplied (from choice 0's Result)
        self.cancelled = False
        self.released = False
        self.first_token_at: float | None = None  # time.perf_counter() when its first token reached the handler


class EngineWorker:
    """Drives `engine.step()` in a background thread. `submit` and `cancel` may be called from any thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._new: deque[Job] = deque()
        self._cancel: deque[tuple[Job, list[int] | None]] = deque()  # (job, choice indices or None = all)
        self._owner: dict[int, tuple[Job, int]] = {}  # engine request id -> (job, choice index)
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stats = WorkerStats()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="r1kit-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def stats(self) -> WorkerStats:
        """The counts after the last engine step (a snapshot replaced whole, so readable from any thread)."""
        alive = self._thread is not None and self._thread.is_alive()
        return self._stats if alive == self._stats.alive else replace(self._stats, alive=alive)

    def submit(self, job: Job) -> None:
        self._new.append(job)
        self._wake.set()

    def cancel(self, job: Job, choices: list[int] | None = None) -> None:
        """Abort some choices of a job, or all of it (queued or running) when choices is None."""
        if choices is None:
            job.cancelled = True  # a job not admitted yet is skipped
        self._cancel.append((job, choices))
        self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            try:
                self._iteration()
            except Exception:  # a bug here must not silently stop serving: log it and go on
                if not self._stop:
                    log.exception("engine worker iteration failed")
                    time.sleep(0.1)

    def _iteration(self) -> None:
        eng = self.engine
        if not (eng.has_work or self._new or self._cancel):
            self._wake.wait()
        self._wake.clear()
        out: dict[Job, list | str] = defaultdict(list)
        while self._cancel:
            self._drop(*self._cancel.popleft())
        while self._new:
            job = self._new.popleft()
            if job.cancelled:
                continue
            try:
                job.ids = eng.add_group(job.prompt_ids, job.params, job.n)
            except Exception as e:  # validated before, so this is rare: report it to that request only
                out[job] = f"error: {e}"
                continue
            self._owner |= {rid: (job, j) for j, rid in enumerate(job.ids)}
        stepped = eng.has_work
        if stepped:
            try:
                events = eng.step()
            except Exception as e:  # e.g. out of memory: fail every request in flight, keep serving
                log.exception("engine step failed")
                for job in {j for j, _ in self._owner.values()}:
                    self._drop(job, None)
                    out[job] = f"error: engine failure ({type(e).__name__}: {e})"
                events = []
            for ev in events:
                owner = self._owner.get(ev.request_id)
                if owner is None:
                    continue
                result = None
                if ev.finished:
                    result = eng.pop_result(ev.request_id)
                    del self._owner[ev.request_id]
                out[owner[0]].append((owner[1], ev.token, result))
        running, waiting = eng.load()
        self._stats = WorkerStats(running, waiting, max(self._stats.max_running, running), self._stats.steps + stepped,
                                  self._thread is not None, len(self._owner))
        if out:
            self.loop.call_soon_threadsafe(_deliver, out)

    def _drop(self, job: Job, choices: list[int] | None) -> None:
        """Abort unfinished samples and discard their results (the engine keeps a Result until it is popped)."""
        for j, rid in enumerate(job.ids):
            if (choices is None or j in choices) and self._owner.pop(rid, None) is not None \
                    and self.engine.abort(rid):
                self.engine.pop_result(rid)


def _deliver(out: dict) -> None:
    for job, items in out.items():
        job.queue.put_nowait(items)
