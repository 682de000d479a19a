"""The CPU stand-in task: short, deterministic arithmetic word problems in GSM8K's style.

Why it exists: on 2 CPU cores SmolLM2-135M-Instruct cannot learn from GSM8K in minutes. It answers 1.6% of GSM8K
correctly and needs ~175 tokens to finish, so groups rarely have reward spread and each step costs minutes. On
these one-step problems with small numbers (sampled at T = 0.8, 64 new tokens) it is right ~23% of the time and
finishes in ~52 tokens, so most groups of 4 have reward spread from correctness, not only from the format bonus.
(Harder variants, two-step problems and numbers up to 90, gave ~5% correct at 64 tokens: GRPO then learned the
'####' format and collapsed onto formatted wrong answers, with no reward spread left.) It is a stand-in, labelled
as such wherever it is used, not a benchmark of the paper.

Rows follow the shared schema (``id``, ``question``, ``answer``, ``solution``, ``meta``). Problem ``i`` of a pool
depends only on (pool, i), so every machine generates the same rows: ``arith_train`` (the training pool, split by
seed like GSM8K train) and ``arith`` (the held-out evaluation set). The two pools use different random streams;
test questions that also occur in the training pool are skipped, so no evaluated question was trained on.
"""

from __future__ import annotations

import random

POOLS = {"arith_train": 4000, "arith": 1000}  # name -> rows
NAMES = ("Ava", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kemal", "Lena", "Maya",
         "Noah")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells")


def problem(pool: str, i: int) -> dict:
    """Problem ``i`` of ``pool``: one of four one-step templates (add, subtract, multiply, share) on small numbers."""
    rng = random.Random(f"{pool}:{i}")
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        q, ans, sol = f"{name} has {a} {item}. {name} buys {b} more {item}. How many {item} does {name} have now?", \
            a + b, f"{a} + {b} = {a + b}"
    elif kind == 1:
        a = rng.randint(5, 20)
        b = rng.randint(1, a - 1)
        q, ans, sol = (f"{name} had {a} {item} and gave {b} of them to a friend. How many {item} does {name} have "
                       "left?"), a - b, f"{a} - {b} = {a - b}"
    elif kind == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        q, ans, sol = (f"{name} buys {a} boxes of {item}. Each box holds {b} {item}. How many {item} does {name} "
                       "buy in total?"), a * b, f"{a} * {b} = {a * b}"
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 5)
        q, ans, sol = (f"{name} shares {a * b} {item} equally among {b} friends. How many {item} does each friend "
                       "get?"), a, f"{a * b} / {b} = {a}"
    return {"id": f"{pool}/{i}", "question": q, "answer": str(ans), "solution": f"{sol}\n#### {ans}",
            "meta": {"template": kind, "stand_in": True}}


def rows(pool: str) -> list[dict]:
    """Every row of ``pool``; the evaluation pool leaves out questions of the training pool."""
    if pool not in POOLS:
        raise ValueError(f"unknown arithmetic pool {pool!r}; valid: {', '.join(POOLS)}")
    if pool == "arith_train":
        return [problem(pool, i) for i in range(POOLS[pool])]
    seen = {r["question"] for r in rows("arith_train")}
    out, i = [], 0
    while len(out) < POOLS[pool]:
        r = problem(pool, i)
        if r["question"] not in seen:
            seen.add(r["question"])
            out.append(r)
        i += 1
    return out


__all__ = ["POOLS", "problem", "rows"]
