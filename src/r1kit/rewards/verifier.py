"""Math answer equivalence: a string fast path, then math-verify in a killable worker-process pool.

Why a process pool (docs/EVAL.md, "The math verifier"): math-verify's timeouts use `signal.alarm`, which
fails outside the main thread (Math-Verify #50/#55), and SymPy can run for minutes or forever on inputs such as
`\\boxed{9^{9^{9^{9}}}}`. Workers run math-verify with its own timeouts off; the parent gives each item a wall-clock
budget and, when one runs over, scores it 0, kills the worker processes and starts a fresh pool. Items that were
running beside the stuck one are resubmitted, not failed. Every timeout, error and crash is counted
(`verifier_stats()`) and logged, never swallowed: a verifier that silently returns 0 looks exactly like a model that
learns nothing (verl PR #5635, trl PR #5281).

Any caller works: plain scripts, heredocs, `python -c`, notebooks and threads, with no `if __name__ == "__main__":`
guard. The workers are fresh interpreters (`python -m r1kit.rewards._worker`, with the caller's sys.path) that
talk over pipes; unlike multiprocessing's spawn and forkserver children they never re-import the caller's main
module, and unlike fork they copy nothing from a multi-threaded parent.

Pool details: at most `max_workers` items are in flight, so a submitted item starts at once and its clock measures
its own run time, not time spent queued. A new pool pings every worker before any item's clock starts, so the
start-up import (about 0.4 s) is never charged to an item.

    v = Verifier(max_workers=4, timeout_s=5)
    v.equivalent(["\\\\frac{1}{2}", "18"], ["0.5", "18"])      # [True, True]; "18" never reaches the pool
    v.stats()  # {'items': 2, 'fast_path': 1, 'pool': 1, 'timeouts': 0, 'errors': 0, 'crashes': 0, 'restarts': 0}
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import re
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool

from r1kit.errors import R1kitError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0  # per item, parse + compare
STARTUP_TIMEOUT_S = 120.0  # starting the workers (first import of SymPy) is not charged to any item
MAX_CRASHES = 2  # an item in flight during this many worker crashes scores 0 instead of being retried
STAT_KEYS = ("items", "fast_path", "pool", "timeouts", "errors", "crashes", "restarts")

# An unescaped $, a box or \( \[ means the string is already LaTeX-delimited text; anything else is a bare answer.
_DELIMITED = re.compile(r"(?<!\\)\$|\\boxed|\\fbox|\\\(|\\\[")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+")
_INT = re.compile(r"[+-]?\d+")


# ---------------------------------------------------------------------------------------------------------------------
# Fast path (parent process, no SymPy)


def normalize_answer(s: str) -> str:
    """Light normalisation for exact matching: strip, drop `$...$` and a lone `\\boxed{}` wrapper, the trailing
    period, `\\!` spacing, and commas in integers written with thousands separators ("7,425,000" -> "7425000";
    "32, 349" keeps its comma: that is a tuple)."""
    s = s.strip().rstrip(".").strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    if s.startswith("\\boxed{") and s.endswith("}") and s.count("\\boxed") == 1:
        s = s[len("\\boxed{") : -1].strip()
    s = s.replace("\\!", "").replace("{,}", ",")
    s = s.rstrip(".").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return re.sub(r"\s+", " ", s)


def fast_equal(gold: str, answer: str) -> bool | None:
    """True/False when decidable without SymPy (equal after normalisation; both integers), else None."""
    g, a = normalize_answer(gold), normalize_answer(answer)
    if g and g == a:
        return True
    if _INT.fullmatch(g) and _INT.fullmatch(a) and max(len(g), len(a)) <= 1000:  # int() refuses > 4300 digits
        return int(g) == int(a)  # "025" == "25" (AIME golds keep leading zeros)
    return None


def latex_wrap(s: str) -> str:
    """Bare answers go to math-verify as `$...$`: undelimited LaTeX is otherwise misread ("2\\sqrt{2}" -> 2)."""
    return s if _DELIMITED.search(s) else f"${s}$"


# ---------------------------------------------------------------------------------------------------------------------
# Pool entry points. They live here (not in _worker) so the parent can submit them without importing math-verify.


def _check(gold: str, pred: str) -> bool:
    from r1kit.rewards import _worker

    return _worker.check(gold, pred)


def _ping() -> bool:
    from r1kit.rewards import _worker

    return _worker.ping()


def send_msg(f, obj) -> None:
    """One length-prefixed pickle on a pipe (the pool's wire format, both directions)."""
    data = pickle.dumps(obj)
    f.write(struct.pack("<Q", len(data)) + data)
    f.flush()


def recv_msg(f):
    head = f.read(8)
    if len(head) < 8:
        raise EOFError("worker pipe closed")
    (n,) = struct.unpack("<Q", head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError("worker pipe closed")
    return pickle.loads(data)


class WorkerPool:
    """The few ProcessPoolExecutor calls the verifier uses (submit, shutdown, kill via `_processes`), on worker
    interpreters started with subprocess: one thread per worker feeds it one call at a time; a worker that dies
    fails its call with BrokenProcessPool and breaks the pool, as ProcessPoolExecutor does."""

    def __init__(self, max_workers: int, max_tasks_per_child: int | None = None):
        self.max_tasks_per_child = max_tasks_per_child
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._processes: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._broken = self._closed = False
        self._threads = [threading.Thread(target=self._serve, daemon=True, name="r1kit-verifier")
                         for _ in range(max_workers)]
        for t in self._threads:
            t.start()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen([sys.executable, "-m", "r1kit.rewards._worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
        with self._lock:
            self._processes[proc.pid] = proc
        return proc

    def _serve(self) -> None:
        proc, done = None, 0
        while True:
            item = self._todo.get()
            if item is None:
                break
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if proc is None or (self.max_tasks_per_child and done >= self.max_tasks_per_child):
                    if proc is not None:
                        proc.stdin.close()
                        proc.wait()
                    proc, done = self._start(), 0
                send_msg(proc.stdin, (fn, args))
                ok, value = recv_msg(proc.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as e:
                self._broken = True
                fut.set_exception(BrokenProcessPool(f"a verifier worker died ({type(e).__name__})"))
                break
            done += 1
            fut.set_result(value) if ok else fut.set_exception(value)
        if proc is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def submit(self, fn, *args) -> Future:
        if self._broken or self._closed:
            raise BrokenProcessPool("the verifier pool is broken") if self._broken else RuntimeError("pool closed")
        fut: Future = Future()
        self._todo.put((fut, fn, args))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._closed = True
        while cancel_futures:
            try:
                item = self._todo.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._todo.put(None)
        if wait:
            for t in self._threads:
                t.join()


# ---------------------------------------------------------------------------------------------------------------------


class Verifier:
    """math-verify behind a fast path and a killable process pool. Thread-safe (batches run one at a time).

    Args:
        max_workers: worker processes (default: half the CPUs, 1-8).
        timeout_s: wall-clock seconds per item, parse + compare; an item over it scores 0.
        max_tasks_per_child: recycle a worker after this many items (bounds SymPy cache growth).
    """

    def __init__(self, max_workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_tasks_per_child: int | None = 1000):
        if timeout_s <= 0:
            raise R1kitError(f"verifier timeout_s must be > 0, got {timeout_s}")
        self.max_workers = max_workers or max(1, min(8, (os.cpu_count() or 2) // 2))
        self.timeout_s = float(timeout_s)
        self.max_tasks_per_child = max_tasks_per_child
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()  # one batch at a time owns the pool
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(STAT_KEYS, 0)

    # -- stats ---------------------------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    def stats(self) -> dict[str, int]:
        """Counters since start (or the last reset): items, fast_path, pool, timeouts, errors, crashes, restarts."""
        with self._stats_lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._stats = dict.fromkeys(STAT_KEYS, 0)

    # -- public API ----------------------------------------------------------------------------------------------

    def equivalent(self, golds: Sequence[str], answers: Sequence[str | None],
                   timeout_s: float | None = None) -> list[bool]:
        """Is each extracted answer (a bare string such as "\\\\frac12" or "18"; None = no answer) equal to its gold?"""
        preds = [None if a is None else latex_wrap(a) for a in answers]
        return self._batch(golds, answers, preds, timeout_s)

    def verify_batch(self, golds: Sequence[str], texts: Sequence[str | None],
                     timeout_s: float | None = None) -> list[bool]:
        """Free-form answer sections: math-verify extracts from the text itself (boxed first)."""
        return self._batch(golds, texts, list(texts), timeout_s)

    def verify(self, gold: str, text: str | None, timeout_s: float | None = None) -> bool:
        return self.verify_batch([gold], [text], timeout_s)[0]

    def close(self) -> None:
        with self._lock:
            self._kill_pool()

    # -- internals -----------------------------------------------------------------------------------------------

    def _batch(self, golds, answers, preds, timeout_s) -> list[bool]:
        if len(golds) != len(answers):
            raise R1kitError(f"verifier got {len(golds)} golds for {len(answers)} answers")
        self._count("items", len(golds))
        out: list[bool] = [False] * len(golds)
        jobs: dict[int, tuple[str, str]] = {}
        for i, (g, a, p) in enumerate(zip(golds, answers, preds)):
            if a is None or not str(g).strip():
                continue
            fast = fast_equal(str(g), a)
            if fast is not None:
                out[i] = fast
                self._count("fast_path")
            else:
                jobs[i] = (latex_wrap(str(g)), p)
        if jobs:
            self._count("pool", len(jobs))
            for i, ok in self._run(jobs, timeout_s or self.timeout_s).items():
                out[i] = ok
        return out

    def _ensure_pool(self) -> WorkerPool:
        if self._pool is None:
            pool = WorkerPool(self.max_workers, max_tasks_per_child=self.max_tasks_per_child)
            try:
                for f in [pool.submit(_ping) for _ in range(self.max_workers)]:
                    f.result(timeout=STARTUP_TIMEOUT_S)
            except Exception as e:  # setup problem (e.g. math-verify missing): fail loudly, never score silent zeros
                _kill(pool)
                raise R1kitError(f"math verifier: worker processes failed to start ({type(e).__name__}: {e})") from e
            self._pool = pool
        return self._pool

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            _kill(pool)

    def _run(self, jobs: dict[int, tuple[str, str]], timeout_s: float) -> dict[int, bool]:
        results = dict.fromkeys(jobs, False)
        todo = deque(jobs)
        crashes = dict.fromkeys(jobs, 0)
        submit_failures = 0
        with self._lock:
            inflight: dict = {}  # future -> (item index, start time)
            while todo or inflight:
                pool = self._ensure_pool()
                try:
                    while todo and len(inflight) < self.max_workers:
                        i = todo[0]
                        inflight[pool.submit(_check, *jobs[i])] = (i, time.monotonic())
                        todo.popleft()
                except (BrokenProcessPool, RuntimeError) as e:  # broke between batches (e.g. a worker OOM-killed)
                    todo.extendleft(i for i, _ in inflight.values())
                    inflight.clear()
                    self._kill_pool()
                    submit_failures += 1
                    if submit_failures > MAX_CRASHES:
                        raise R1kitError(f"math verifier: the worker pool keeps breaking ({type(e).__name__})") from e
                    continue
                deadline = min(start for _, start in inflight.values()) + timeout_s
                left = max(0.0, deadline - time.monotonic())
                done, _ = wait(list(inflight), timeout=left, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    i, _ = inflight.pop(fut)
                    try:
                        results[i] = bool(fut.result())
                    except BrokenProcessPool:
                        broken = True
                        crashes[i] += 1
                        if crashes[i] < MAX_CRASHES:
                            todo.appendleft(i)
                        else:
                            self._count("crashes")
                            log.warning("math verifier: worker crashed twice on (gold=%.80r, pred=%.80r); scored 0",
                                        *jobs[i])
                    except Exception as e:  # noqa: BLE001 - any worker-side error scores 0 and is counted
                        self._count("errors")
                        log.warning("math verifier: %s: %s (gold=%.80r, pred=%.80r); scored 0",
                                    type(e).__name__, e, *jobs[i])
                now = time.monotonic()
                expired = [f for f, (_, start) in inflight.items() if now - start >= timeout_s]
                for fut in expired:
                    i, _ = inflight.pop(fut)
                    self._count("timeouts")
                    log.warning("math verifier: timeout after %.1fs (gold=%.80r, pred=%.80r); scored 0, pool restarted",
                                timeout_s, *jobs[i])
                if expired or broken:
                    # Neighbours of a stuck or crashed item lose their worker too: rerun them with a fresh clock.
                    todo.extendleft(i for i, _ in inflight.values())
                    inflight.clear()
                    self._kill_pool()
                    self._count("restarts")
        return results


def _kill(pool: WorkerPool) -> None:
    # A running call cannot be cancelled: killing the workers breaks the pool, which then shuts down without waiting
    # for the stuck SymPy call.
    procs = list(pool._processes.values())
    for p in procs:
        try:
            p.kill()
        except OSError:  # already gone
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


# ---------------------------------------------------------------------------------------------------------------------
# Module-level default verifier (created on first use) and the simple API.

_default: Verifier | None = None
_default_lock = threading.Lock()


def get_verifier() -> Verifier:
    """The shared default Verifier (created lazily; workers start on the first item that needs SymPy)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Verifier()
        return _default


def configure_verifier(max_workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                       max_tasks_per_child: int | None = 1000) -> Verifier:
    """Replace the default verifier (e.g. from the trainer config); the old pool is shut down."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = Verifier(max_workers, timeout_s, max_tasks_per_child)
        return _default


def verifier_stats() -> dict[str, int]:
    """Counters of the default verifier, for the trainer's logs (see Verifier.stats)."""
    return get_verifier().stats()


def reset_verifier_stats() -> None:
    get_verifier().reset_stats()


def verify(gold: str, text: str | None, timeout_s: float | None = None) -> bool:
    """The evaluation contract `verify(gold, answer_section) -> bool` on the default verifier."""
    return get_verifier().verify(gold, text, timeout_s)
