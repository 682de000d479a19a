"""The benchmark registry: one row per data set the pipeline loads, grades, evaluates or reports.

Data loading (file, hub dataset, subsets), grading (the rule), the evaluation checks, the report's labels and the
workflow's wildcard constraint all read this table, and a test holds the config schema's enums to it, so a new
benchmark is one row here (plus its normaliser in ``pspo.data`` when it comes from the hub).
"""

from __future__ import annotations

from dataclasses import dataclass

from pspo.errors import PSPOError


@dataclass(frozen=True)
class Benchmark:
    name: str
    grader: str  # "numeric" (exact rational, 1e-6), "rounded" (also a rounded gold, ASDiv) or "math" (Math-Verify)
    file: str | None = None  # the local JSONL in data.dir; None: generated in code by pspo.arith
    hub: tuple[str, str | None, tuple[str, ...]] | None = None  # (repo, config, splits in concatenation order)
    subsets: tuple[str, ...] = ("all",)
    label: str | None = None  # the name in tables and figures; None: a training pool, never evaluated
    paper: bool = False  # one of the paper's four evaluation benchmarks


# Order matters: it is the order of every "valid: ..." list and of the schema's enums.
REGISTRY = {b.name: b for b in (
    Benchmark("gsm8k", "numeric", "gsm8k_test.jsonl", ("openai/gsm8k", "main", ("test",)), label="GSM8K", paper=True),
    Benchmark("gsm8k_train", "numeric", "gsm8k_train.jsonl", ("openai/gsm8k", "main", ("train",))),
    Benchmark("svamp", "numeric", "svamp.jsonl", ("ChilleD/SVAMP", None, ("train", "test")), ("all", "300"),
              label="SVAMP", paper=True),
    Benchmark("asdiv", "rounded", "asdiv.jsonl", ("EleutherAI/asdiv", None, ("validation",)),
              ("all", "numeric", "pal2096"), label="ASDiv", paper=True),
    Benchmark("math500", "math", "math500.jsonl", ("HuggingFaceH4/MATH-500", None, ("test",)), label="MATH-500",
              paper=True),
    # The CPU stand-in task (pspo.arith): its held-out set is evaluated, its pool trained on; not the paper's.
    Benchmark("arith", "numeric", label="Arithmetic (CPU stand-in)"),
    Benchmark("arith_train", "numeric"),
)}
ALIASES = {"gsm8k_test": "gsm8k"}  # the file's name, accepted wherever a benchmark is named

LOADABLE = tuple(REGISTRY)
PAPER_BENCHMARKS = tuple(n for n, b in REGISTRY.items() if b.paper)
BENCHMARKS = tuple(n for n, b in REGISTRY.items() if b.label is not None)  # evaluable: config evaluation.benchmarks
GENERATED = tuple(n for n, b in REGISTRY.items() if b.file is None)  # made by pspo.arith: no file, no hub
TRAIN_SETS = {"gsm8k": "gsm8k_train", "arith": "arith_train"}  # config data.train_set -> the pool it splits
LABELS = {n: REGISTRY[n].label for n in BENCHMARKS}


def canonical(name: str, valid: tuple[str, ...] = LOADABLE) -> str:
    """``name`` with its alias resolved; one line listing the valid names when it is none of ``valid``."""
    name = ALIASES.get(name, name)
    if name not in valid:
        raise PSPOError(f"unknown benchmark {name!r}; valid: {', '.join(valid)}")
    return name


def get(name: str, valid: tuple[str, ...] = LOADABLE) -> Benchmark:
    return REGISTRY[canonical(name, valid)]


__all__ = ["Benchmark", "REGISTRY", "ALIASES", "LOADABLE", "PAPER_BENCHMARKS", "BENCHMARKS", "GENERATED",
           "TRAIN_SETS", "LABELS", "canonical", "get"]
