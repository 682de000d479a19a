"""Grading throughput: numeric sets (GSM8K references + SVAMP/ASDiv golds in varied formats) and MATH-500.

    python benchmarks/bench_grading.py [--data-dir D] [--repeat 3] [--workers 2]

Prints completions/s for the numeric grader (``pspo.grading.grade``), for the paper reward, and for MATH-500
(Math-Verify) serially and with a process pool. Target: >= 2,000 numeric completions/s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from pspo import data
from pspo.grading import grade, grade_many
from pspo.rewards import paper_reward

FORMATS = [
    "#### {a}",
    "Let me think step by step. First we add the numbers, then we subtract.\nSo the result is {a}.\n#### {a}",
    "The answer is **{a}**.",
    "We compute 12 * 3 = 36 and 36 + 5 = 41, so the total is ${a}.",
    "\\boxed{{{a}}}",
    "The final answer is {a} apples.",
    "Hmm, I think it is 7. No wait, it is 13.",  # wrong
    "I am not sure how to solve this problem.",  # no number
]


def numeric_workload(data_dir: Path | None, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    benches, comps, golds = [], [], []
    for r in data.load_benchmark("gsm8k", data_dir=data_dir):
        benches.append("gsm8k"), comps.append(r["solution"]), golds.append(r["answer"])
    for name in ("svamp", "asdiv"):
        rows = data.load_benchmark(name, data_dir=data_dir)
        if name == "asdiv":
            rows = data.select_eval_rows(name, rows, subset="numeric")
        for r in rows:
            benches.append(name)
            comps.append(rng.choice(FORMATS).format(a=r["answer"]))
            golds.append(r["answer"])
    return benches, comps, golds


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    benches, comps, golds = numeric_workload(args.data_dir)
    n = len(comps)
    t = timed(lambda: [grade(b, c, g) for b, c, g in zip(benches, comps, golds)], args.repeat)
    acc = sum(grade(b, c, g).correct for b, c, g in zip(benches, comps, golds)) / n
    print(f"numeric grade(): {n} completions in {t:.3f}s = {n / t:,.0f} completions/s (accuracy {acc:.3f})")
    t = timed(lambda: paper_reward(None, comps, golds), args.repeat)
    print(f"paper_reward:    {n} completions in {t:.3f}s = {n / t:,.0f} completions/s")

    rows = data.load_benchmark("math500", data_dir=args.data_dir)
    mc = [r["solution"] for r in rows] + [f"So the answer is\n#### {r['answer']}" for r in rows]
    mg = [r["answer"] for r in rows] * 2
    grade_many("math500", mc[:5], mg[:5])  # warm-up: imports and the grammar
    t0 = time.perf_counter()
    res = grade_many("math500", mc, mg, workers=1)
    t1 = time.perf_counter() - t0
    print(f"math500 serial:  {len(mc)} completions in {t1:.2f}s = {len(mc) / t1:,.0f} completions/s "
          f"(accuracy {sum(g.correct for g in res) / len(res):.3f})")
    t0 = time.perf_counter()
    grade_many("math500", mc, mg, workers=args.workers)
    t2 = time.perf_counter() - t0
    print(f"math500 {args.workers} procs: {len(mc)} completions in {t2:.2f}s = {len(mc) / t2:,.0f} completions/s")


if __name__ == "__main__":
    main()
