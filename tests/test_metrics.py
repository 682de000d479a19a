"""Pure metric functions: pass@k, Wilson interval, repetition loops, majority vote, metrics_from_samples."""

from __future__ import annotations

import itertools
import math

import pytest

from pspo.errors import PSPOError
from pspo.evaluation import has_repetition_loop, majority_answer, metrics_from_samples, pass_at_k, wilson_interval


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that contain at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_equals_enumeration_over_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edges_and_errors():
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 16, 1) == 1.0
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)
    assert pass_at_k(16, 1, 16) == 1.0
    # the closed form against math.comb
    assert pass_at_k(16, 5, 4) == pytest.approx(1 - math.comb(11, 4) / math.comb(16, 4))
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


# Reference values at z = 1.96 computed by hand from the closed form: x=0 -> upper z^2/(n+z^2),
# x=n -> lower n/(n+z^2), x=n/2 -> 1/2 -+ z / (2 sqrt(n + z^2)).
WILSON_REFERENCE = [
    (5, 10, (0.5 - 1.96 / (2 * math.sqrt(13.8416)), 0.5 + 1.96 / (2 * math.sqrt(13.8416)))),
    (0, 10, (0.0, 3.8416 / 13.8416)),
    (10, 10, (10 / 13.8416, 1.0)),
    (1, 1, (1 / 4.8416, 1.0)),
]


@pytest.mark.parametrize("x, n, ref", WILSON_REFERENCE)
def test_wilson_known_values(x, n, ref):
    low, high = wilson_interval(x, n)
    assert low == pytest.approx(ref[0], abs=1e-9)
    assert high == pytest.approx(ref[1], abs=1e-9)


def test_wilson_matches_statsmodels():
    # statsmodels.stats.proportion.proportion_confint(5, 10, method="wilson") (z = norm.ppf(0.975))
    low, high = wilson_interval(5, 10, z=1.959963984540054)
    assert (low, high) == pytest.approx((0.2365930905, 0.7634069095), abs=1e-9)


@pytest.mark.parametrize("x, n", [(0, 1), (3, 7), (17, 100), (81, 263), (500, 1319), (1318, 1319)])
def test_wilson_is_the_score_test_inversion(x, n):
    """The Wilson bounds are the two roots p of (p - phat)^2 = z^2 p (1 - p) / n (solved independently here)."""
    z, phat = 1.96, x / n
    a = 1 + z * z / n
    b = -(2 * phat + z * z / n)
    c = phat * phat
    disc = math.sqrt(b * b - 4 * a * c)
    roots = ((-b - disc) / (2 * a), (-b + disc) / (2 * a))
    low, high = wilson_interval(x, n)
    assert low == pytest.approx(max(0.0, roots[0]), abs=1e-12)
    assert high == pytest.approx(min(1.0, roots[1]), abs=1e-12)
    assert low <= phat <= high


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    # a wider z gives a wider interval
    assert wilson_interval(5, 10, z=2.576)[0] < wilson_interval(5, 10)[0]


def test_repetition_loop():
    assert has_repetition_loop("so " * 12)
    assert not has_repetition_loop("so " * 11)  # shorter than the 12-word minimum
    assert has_repetition_loop("First we add. " + "x = 5 + 3 . " * 3)  # period 6, three periods, 18 words
    assert not has_repetition_loop("x = 5 + 3 . " * 2 + "so the answer is 8")
    assert has_repetition_loop("Then " + "the total is 12 and " * 4 + "then")
    normal = ("Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes muffins with 4. "
              "So she sells 16 - 3 - 4 = 9 eggs. She makes 9 * 2 = 18 dollars. #### 18")
    assert not has_repetition_loop(normal)
    assert not has_repetition_loop("")


def test_majority_vote():
    s = [{"extracted": "18", "correct": True}, {"extracted": "7", "correct": False},
         {"extracted": "7.0", "correct": False}, {"extracted": None, "correct": False}]
    assert majority_answer(s)["extracted"] == "7"  # 7 and 7.0 are one number: two votes
    tie = [{"extracted": "3", "correct": False}, {"extracted": "4", "correct": True}]
    assert majority_answer(tie)["extracted"] == "3"  # ties go to the first answer seen
    assert majority_answer([{"extracted": None, "correct": False}]) is None


def _row(id_, correct, extracted="1", tokens=10, finish="stop", formatted=True, completion="#### 1", sample=None):
    r = {"id": id_, "prompt": "p", "completion": completion, "extracted": extracted, "gold": "1",
         "correct": correct, "formatted": formatted, "completion_tokens": tokens, "finish_reason": finish}
    if sample is not None:
        r["sample"] = sample
    return r


def test_metrics_greedy_rows():
    rows = [_row("a", True), _row("b", False, extracted=None, formatted=False, finish="length", tokens=30,
                                  completion="no no " * 10), _row("c", True, tokens=20)]
    m = metrics_from_samples(rows)
    assert (m["n"], m["n_prompts"], m["samples_per_prompt"], m["correct"]) == (3, 3, 1, 2)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy_ci95"] == list(wilson_interval(2, 3))
    assert m["mean_completion_tokens"] == pytest.approx(20.0)
    assert m["format_rate"] == pytest.approx(2 / 3)
    assert m["truncation_rate"] == pytest.approx(1 / 3)
    assert m["repetition_rate"] == pytest.approx(1 / 3)
    assert m["pass_at_k"] is None and m["majority_accuracy"] is None


def test_metrics_sampled_rows():
    # prompt a: 1 of 4 correct, majority wrong; prompt b: 3 of 4 correct, majority right
    rows = [_row("a", i == 0, extracted="1" if i == 0 else "2", sample=i) for i in range(4)]
    rows += [_row("b", i < 3, extracted="1" if i < 3 else "5", sample=i) for i in range(4)]
    m = metrics_from_samples(rows)
    assert m["n"] == 8 and m["n_prompts"] == 2 and m["samples_per_prompt"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    assert set(m["pass_at_k"]) == {"1", "2", "3", "4"}
    assert m["pass_at_k"]["1"] == pytest.approx(m["accuracy"])
    for k in range(1, 5):
        want = (brute_force_pass_at_k(4, 1, k) + brute_force_pass_at_k(4, 3, k)) / 2
        assert m["pass_at_k"][str(k)] == pytest.approx(want)
    assert m["majority_accuracy"] == pytest.approx(0.5)


def test_metrics_rejects_empty_or_foreign_rows():
    with pytest.raises(PSPOError):
        metrics_from_samples([])
    with pytest.raises(PSPOError, match="lacks"):
        metrics_from_samples([{"id": "x", "completion": "1"}])
