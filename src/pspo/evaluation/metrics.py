"""Evaluation metrics, all computed from the per-sample rows (never from anything kept on the side).

Pure functions: ``wilson_interval``, ``pass_at_k``, ``has_repetition_loop``, ``majority_answer`` and
``metrics_from_samples`` (rows or a per-sample JSONL path -> the metrics dict stored in the metrics JSON).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Iterable, Sequence

from pspo.errors import PSPOError

# --- repetition ------------------------------------------------------------------------------------------------
# A completion "loops" if it contains a span in which a sequence of p whitespace-separated words
# (1 <= p <= LOOP_MAX_PERIOD) repeats back to back at least LOOP_MIN_REPEATS times and the span is at least
# LOOP_MIN_WORDS words long: "so so so so ..." (p=1, 12 words) or "x = 5 + 3 . x = 5 + 3 . x = 5 + 3 ." (p=6,
# three periods, 18 words). An ordinary worked solution almost never does this; a degenerate one that loops until
# max_new_tokens does it at once.
LOOP_MAX_PERIOD = 20
LOOP_MIN_REPEATS = 3
LOOP_MIN_WORDS = 12


def has_repetition_loop(
    text: str, *, max_period: int = LOOP_MAX_PERIOD, min_repeats: int = LOOP_MIN_REPEATS, min_words: int = LOOP_MIN_WORDS
) -> bool:
    """True if ``text`` has a back-to-back repeated word n-gram loop (see the module constants)."""
    words = text.split()
    n = len(words)
    for p in range(1, max_period + 1):
        need = max(min_repeats * p, min_words)  # words covered by the periodic span
        if need > n:
            break
        run = 0  # consecutive i with words[i] == words[i + p]; the span then covers run + p words
        for i in range(n - p):
            if words[i] == words[i + p]:
                run += 1
                if run + p >= need:
                    return True
            else:
                run = 0
    return False


# --- interval and estimators ------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (statsmodels ``proportion_confint(method="wilson")``).

    ``n == 0`` gives ``(0.0, 1.0)`` (no information).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of which c are correct."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # prod_{i=n-c+1}^{n} (1 - k/i), the numerically stable form of the ratio of binomials
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def _vote_key(extracted: str) -> str:
    """Answers that are the same number vote together ("18", "18.0", "36/2"); others by their text."""
    try:
        from pspo.grading import to_number

        num = to_number(extracted)
    except ImportError:  # pragma: no cover - grading is part of the package
        num = None
    return f"num:{num}" if num is not None else f"str:{extracted.strip()}"


def majority_answer(samples: Sequence[dict]) -> dict | None:
    """The sample standing for the most frequent extracted answer (None answers do not vote).

    Ties go to the answer whose first occurrence comes first (by sample order), so the vote is deterministic.
    Returns that first sample, or None if no sample has an extracted answer.
    """
    keys = [_vote_key(s["extracted"]) if s.get("extracted") is not None else None for s in samples]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    best = max(counts.values())
    for s, k in zip(samples, keys):
        if k is not None and counts[k] == best:
            return s
    return None  # unreachable


# --- metrics from the per-sample file ---------------------------------------------------------------------------
REQUIRED_KEYS = ("id", "correct", "extracted", "formatted", "completion", "completion_tokens", "finish_reason")


def _rows(samples: str | os.PathLike | Iterable[dict]) -> list[dict]:
    if isinstance(samples, (str, os.PathLike)):
        from pspo.io import read_jsonl

        return read_jsonl(samples)
    return list(samples)


def metrics_from_samples(samples: str | os.PathLike | Iterable[dict]) -> dict:
    """The metrics of one evaluation, computed only from its per-sample rows (a list or a per-sample JSONL path).

    Keys: ``n`` (graded completions), ``n_prompts``, ``samples_per_prompt``, ``correct``, ``accuracy``
    (= correct / n; with several samples per prompt this is the mean per-sample accuracy, i.e. pass@1),
    ``accuracy_ci95`` (Wilson, over the n completions), ``mean_completion_tokens`` (generated tokens including
    the stop token), ``format_rate`` (completions with a ``#### <number>`` line), ``truncation_rate``
    (finish_reason == "length"), ``repetition_rate`` (completions with a repetition loop, see
    ``has_repetition_loop``), ``total_completion_tokens``; with more than one sample per prompt also ``pass_at_k``
    ({"1": ..., ..., "n": ...}, unbiased estimator averaged over prompts) and ``majority_accuracy`` (vote over the
    extracted answers).
    """
    rows = _rows(samples)
    if not rows:
        raise PSPOError("no per-sample rows to compute metrics from (empty samples file)")
    for i, r in enumerate(rows):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise PSPOError(f"per-sample row {i} (id {r.get('id')!r}) lacks {', '.join(missing)}; not an evaluation file")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["id"], []).append(r)
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    low, high = wilson_interval(correct, n)
    sizes = sorted({len(g) for g in groups.values()})
    out: dict = {
        "n": n,
        "n_prompts": len(groups),
        "samples_per_prompt": sizes[0] if len(sizes) == 1 else sizes,
        "correct": correct,
        "accuracy": correct / n,
        "accuracy_ci95": [low, high],
        "mean_completion_tokens": sum(int(r["completion_tokens"]) for r in rows) / n,
        "total_completion_tokens": sum(int(r["completion_tokens"]) for r in rows),
        "format_rate": sum(bool(r["formatted"]) for r in rows) / n,
        "truncation_rate": sum(r["finish_reason"] == "length" for r in rows) / n,
        "repetition_rate": sum(has_repetition_loop(r["completion"]) for r in rows) / n,
        "pass_at_k": None,
        "majority_accuracy": None,
    }
    k_max = min(len(g) for g in groups.values())
    if max(len(g) for g in groups.values()) > 1:
        counts = [(len(g), sum(bool(r["correct"]) for r in g)) for g in groups.values()]
        out["pass_at_k"] = {
            str(k): sum(pass_at_k(m, c, k) for m, c in counts) / len(counts) for k in range(1, k_max + 1)
        }
        votes = [majority_answer(g) for g in groups.values()]
        out["majority_accuracy"] = sum(bool(v is not None and v["correct"]) for v in votes) / len(votes)
    return out


__all__ = [
    "wilson_interval", "pass_at_k", "has_repetition_loop", "majority_answer", "metrics_from_samples",
    "LOOP_MAX_PERIOD", "LOOP_MIN_REPEATS", "LOOP_MIN_WORDS",
]
