"""Evaluation metrics (docs/EVAL.md, "Metrics").

    pass_at_k(10, 5, 2)                   # 0.777778: unbiased pass@k (Chen et al. 2021), stable product form
    mean_stderr([1.0, 0.5, 0.0])          # (0.5, 0.2887): mean and std(ddof=1)/sqrt(N) over problems
    majority_vote(["1/2", "\\\\frac12", "0.5", "3"], equivalent)   # (0, [0, 1, 2]): winning cluster, its members

pass@1 is the R1 definition: mean correctness over the k samples of a problem, then mean ± stderr over problems.
cons@k: the answers of a problem's k samples are clustered by equivalence (greedy, in sample order: an answer joins
the first cluster whose first member is equivalent to it, else starts a cluster; samples with no extracted answer
share one "empty" cluster that scores 0). The largest cluster wins; ties go to the cluster whose first member
appears earliest. The vote is scored by that first member's verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from r1kit.errors import R1kitError

Equivalent = Callable[[list[str], list[str]], list[bool]]  # (references, answers) -> pairwise equal?


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for n samples of which c are correct: 1 - C(n-c, k) / C(n, k), computed as
    1 - prod_{i=n-c+1}^{n} (1 - k/i); 1.0 when n - c < k (every k-subset holds a correct sample)."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise R1kitError(f"pass_at_k needs integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or not 0 <= c <= n:
        raise R1kitError(f"pass_at_k needs n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise R1kitError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """(mean, std(ddof=1) / sqrt(N)); stderr 0.0 for fewer than two values; (nan, nan) for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def cluster_answers(answers: Sequence[str | None], equivalent: Equivalent) -> list[int]:
    """Cluster id per answer (-1 = the empty cluster of samples with no answer); ids number clusters in order of
    their first member. Identical strings (ignoring surrounding space) are grouped without calling `equivalent`."""
    ids: list[int] = []
    reps: list[str] = []  # first member of each cluster
    exact: dict[str, int] = {}
    for a in answers:
        if a is None or not a.strip():
            ids.append(-1)
            continue
        key = a.strip()
        if key in exact:
            ids.append(exact[key])
            continue
        cid = -1
        if reps:
            same = equivalent(list(reps), [key] * len(reps))
            cid = next((j for j, ok in enumerate(same) if ok), -1)
        if cid < 0:
            reps.append(key)
            cid = len(reps) - 1
        exact[key] = cid
        ids.append(cid)
    return ids


def majority_vote(answers: Sequence[str | None], equivalent: Equivalent) -> tuple[int, list[int]]:
    """(cluster id of the winner, sample indices in it). The largest cluster wins; a tie goes to the cluster whose
    first member appears earliest (the empty cluster, id -1, takes part like any other)."""
    if not answers:
        raise R1kitError("majority_vote needs at least one answer")
    ids = cluster_answers(answers, equivalent)
    members: dict[int, list[int]] = {}
    for i, cid in enumerate(ids):
        members.setdefault(cid, []).append(i)
    winner = min(members, key=lambda cid: (-len(members[cid]), members[cid][0]))
    return winner, members[winner]


def cons_at_k(answers: Sequence[str | None], correct: Sequence[bool],
              equivalent: Equivalent) -> tuple[bool, str | None]:
    """(is the majority answer correct, the majority answer). The empty cluster is never correct."""
    winner, members = majority_vote(answers, equivalent)
    if winner == -1:
        return False, None
    return bool(correct[members[0]]), answers[members[0]]


def pass_ks(k: int) -> list[int]:
    """The pass@k values reported for k samples: 1, 2, 4, ... up to k, and k itself."""
    ks, j = [], 1
    while j <= k:
        ks.append(j)
        j *= 2
    if ks[-1] != k:
        ks.append(k)
    return ks


__all__ = ["cluster_answers", "cons_at_k", "majority_vote", "mean_stderr", "pass_at_k", "pass_ks"]
