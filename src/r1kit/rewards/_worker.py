"""Worker-process side of the math verifier: `python -m r1kit.rewards._worker` serves calls from
r1kit.rewards.verifier.WorkerPool on stdin/stdout (length-prefixed pickles), one at a time.

math-verify's own timeouts use `signal.alarm`, which works only in a process's main thread (Math-Verify #50) and
was silently swallowed in other frameworks (verl PR #5635, trl PR #5281). Here they are switched off
(`parsing_timeout=None`, `timeout_seconds=None`); the parent enforces a wall-clock limit per item and kills the
worker instead (r1kit/rewards/verifier.py).
"""

from __future__ import annotations

import logging
import pickle
import sys
from functools import lru_cache

import math_verify.grader
import math_verify.parser
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

# The "timeout is disabled" warning fires once per process; every pool worker would print it.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True
logging.getLogger("math_verify").setLevel(logging.ERROR)

# Gold: math-verify defaults (LaTeX + plain expressions). Prediction: boxed answers first (priority 0, as open-r1 and
# lighteval), then the usual anchors ("final answer is", "answer:") and plain LaTeX/expressions.
GOLD_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
PRED_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    # The same gold is checked against G completions in a row; parsed SymPy objects are immutable, so caching is safe.
    return parse(gold, extraction_config=GOLD_CONFIG, parsing_timeout=None)


def check(gold: str, pred: str) -> bool:
    """math-verify equivalence of two prepared strings (gold first: verify() is not symmetric)."""
    target = parse(pred, extraction_config=PRED_CONFIG, parsing_timeout=None)
    return bool(verify(_parse_gold(gold), target, timeout_seconds=None))


def ping() -> bool:
    """Used by the parent to start workers (and pay the first-parse cost) before any item's clock starts."""
    return check("1", "$1$")


def serve() -> None:
    """Answer (function, args) calls until stdin closes; results and exceptions go back as (ok, value)."""
    from r1kit.rewards.verifier import recv_msg, send_msg

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print in a library must not corrupt the reply stream
    while True:
        try:
            fn, args = recv_msg(inp)
        except EOFError:
            return
        try:
            reply = (True, fn(*args))
        except Exception as e:  # noqa: BLE001 - the parent counts and logs it
            reply = (False, e)
        try:
            send_msg(out, reply)
        except pickle.PicklingError:
            send_msg(out, (False, RuntimeError(repr(reply[1])[:500])))


if __name__ == "__main__":
    serve()
