"""Benchmark data: load (local JSONL or the public hub datasets), select evaluation subsets, split GSM8K train.

Which benchmarks exist, and each one's file, hub dataset and subsets, is ``pspo.benchmarks``. Every row has the
shared schema of ``shared/data/README.md``: ``id``, ``question``, ``answer`` (normalised gold),
``solution`` (or None) and ``meta``.

* ``load_benchmark(name, source="local")`` reads ``<data_dir>/<file>.jsonl``; ``source="hub"`` loads the public
  dataset with ``datasets.load_dataset`` and normalises it to the same schema (``normalize_hub_records``).
* ``select_eval_rows`` picks a subset (ASDiv ``numeric`` / ``pal2096``, SVAMP ``300``) and an optional seeded
  ``limit`` (a random subset of that size, kept in the original order).
* ``split_train_val`` shuffles GSM8K train exactly like ``datasets.Dataset.shuffle(seed=seed)`` (a permutation
  from ``numpy.random.default_rng(seed)``), takes the first ``train_size`` rows for training and the rest
  (or the first ``val_size`` of the rest) for validation. With 7473 rows: 7000 + 473. The authors' loader used
  ``range(7000, len - 1)``, an off-by-one that drops the last shuffled row (472 rows); ``val_size=472``
  reproduces their split exactly.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

# The registry (pspo.benchmarks) names each benchmark's file, hub dataset and subsets.
from pspo.benchmarks import BENCHMARKS, GENERATED, PAPER_BENCHMARKS, REGISTRY, TRAIN_SETS, canonical
from pspo.errors import PSPOError
from pspo.hub import load_hub, normalize_asdiv_answer, normalize_hub_records

FILES = {n: b.file for n, b in REGISTRY.items() if b.file is not None}
SUBSETS = {n: b.subsets for n, b in REGISTRY.items()}
HUB_DATASETS = {n: b.hub for n, b in REGISTRY.items() if b.hub is not None}
REQUIRED_KEYS = ("id", "question", "answer", "solution", "meta")
SVAMP_300_SIZE = 300
GSM8K_TRAIN_SIZE = 7000

_ENV_DATA_DIR = "PSPO_DATA_DIR"
_FIX = (
    "set `data.dir` in the config (or --data-dir / $PSPO_DATA_DIR) to the directory holding the benchmark JSONL "
    "files, or use source hub"
)


# ---------------------------------------------------------------------------------------------- loading
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else $PSPO_DATA_DIR, else ``shared/data`` next to this checkout (if it exists)."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get(_ENV_DATA_DIR):
        return Path(os.environ[_ENV_DATA_DIR])
    guess = Path(__file__).resolve().parents[3] / "shared" / "data"
    if guess.is_dir():
        return guess
    raise PSPOError(f"no data directory given; {_FIX}")


def resolve_source(source: str, data_dir: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """``(source, dir)`` with ``auto`` made concrete: the local directory when it exists (``data_dir``, else
    $PSPO_DATA_DIR), else the hub. Resolved once, where the workflow starts, so every job and record names one."""
    if source != "auto":
        return source, None if data_dir is None else str(data_dir)
    for candidate in (data_dir, os.environ.get(_ENV_DATA_DIR)):
        if candidate and Path(candidate).is_dir():
            return "local", str(candidate)
    return "hub", None if data_dir is None else str(data_dir)


def data_file(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The local JSONL path of a benchmark; PSPOError naming the file, the directory and the fix if missing."""
    name = canonical(name)
    directory = resolve_data_dir(data_dir)
    path = directory / FILES[name]
    if not path.is_file():
        if not directory.is_dir():
            raise PSPOError(f"data directory {directory} does not exist (looking for {FILES[name]}); {_FIX}")
        raise PSPOError(f"{FILES[name]} not found in {directory}; {_FIX}")
    return path


def _validate_rows(rows: list[dict], where: str) -> list[dict]:
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise PSPOError(f"{where}: row {i} lacks key(s) {', '.join(missing)} (schema: {', '.join(REQUIRED_KEYS)})")
        if not isinstance(row["meta"], dict):
            raise PSPOError(f"{where}: row {i} ({row['id']}): 'meta' must be an object")
        if row["id"] in seen:
            raise PSPOError(f"{where}: duplicate id {row['id']!r} (row {i})")
        seen.add(row["id"])
    if not rows:
        raise PSPOError(f"{where}: no rows")
    return rows


def load_benchmark(
    name: str, *, source: str = "local", data_dir: str | os.PathLike | None = None, revision: str | None = None
) -> list[dict]:
    """Rows of ``name`` (gsm8k = GSM8K test, gsm8k_train, svamp, asdiv, math500) in the shared schema."""
    from pspo.io import read_jsonl

    name = canonical(name)
    if name in GENERATED:
        from pspo import arith

        return _validate_rows(arith.rows(name), f"pspo.arith:{name}")
    if source == "local":
        path = data_file(name, data_dir)
        return _validate_rows(read_jsonl(path), str(path))
    if source == "hub":
        return _validate_rows(load_hub(name, revision=revision), f"hub:{HUB_DATASETS[name][0]}")
    raise PSPOError(f"unknown data source {source!r}; valid: local, hub")


# ---------------------------------------------------------------------------------------------- selection
def _stable_hash(*parts: Any) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def select_eval_rows(
    name: str, rows: Sequence[dict], *, subset: str = "all", limit: int | None = None, seed: int = 0
) -> list[dict]:
    """The evaluation rows of ``name``: a named subset, then (optionally) a seeded random ``limit`` rows.

    * asdiv ``numeric``: ``meta.single_numeric`` (2084 rows). ``pal2096``: ``meta.in_pal2096`` (2096 rows) with
      ``answer`` replaced by ``meta.pal_target`` (the original kept in ``meta.answer_original``).
    * svamp ``300``: a fixed 300-row subset: the 300 ids with the smallest sha256("svamp300:<id>"), independent
      of ``seed`` and of row order. It is *not* ChilleD/SVAMP's test split (whose ids are not in the local data).
    * ``limit``: ``random.Random(seed).sample`` of that many row positions, returned in the original order.
    Rows are returned as new lists; rows are not copied unless changed (pal2096).
    """
    name = canonical(name)
    if subset not in SUBSETS[name]:
        raise PSPOError(f"unknown subset {subset!r} for {name}; valid: {', '.join(SUBSETS[name])}")
    rows = list(rows)
    if subset == "numeric":
        rows = [r for r in rows if r["meta"].get("single_numeric")]
    elif subset == "pal2096":
        if rows and all(r["meta"].get("in_pal2096") is None for r in rows):
            raise PSPOError(
                "asdiv subset pal2096 needs meta.in_pal2096 (only in the local asdiv.jsonl); use source local"
            )
        selected = []
        for r in rows:
            if r["meta"].get("in_pal2096"):
                r = {**r, "answer": str(r["meta"]["pal_target"]), "meta": {**r["meta"], "answer_original": r["answer"]}}
                selected.append(r)
        rows = selected
    elif subset == "300":
        if len(rows) < SVAMP_300_SIZE:
            raise PSPOError(f"svamp subset 300 needs at least 300 rows, got {len(rows)}")
        keep = set(sorted((r["id"] for r in rows), key=lambda i: _stable_hash("svamp300", i))[:SVAMP_300_SIZE])
        rows = [r for r in rows if r["id"] in keep]
    if limit is not None:
        if int(limit) <= 0:
            raise PSPOError(f"limit must be a positive number of rows, got {limit}")
        if limit < len(rows):
            picked = sorted(random.Random(seed).sample(range(len(rows)), int(limit)))
            rows = [rows[i] for i in picked]
    if not rows:
        raise PSPOError(f"empty selection: {name} subset {subset} limit {limit} selects no rows")
    return rows


def select_ids(name: str, rows: Sequence[dict], ids: Iterable[str]) -> list[dict]:
    """Rows with the given ids, in the given order; an unknown id -> error listing a few valid ones."""
    by_id = {r["id"]: r for r in rows}
    out = []
    for i in ids:
        if i not in by_id:
            some = ", ".join(list(by_id)[:3])
            raise PSPOError(f"unknown {name} id {i!r}; valid ids look like {some}, ... ({len(by_id)} ids)")
        out.append(by_id[i])
    return out


def split_train_val(
    rows: Sequence[dict], *, seed: int, train_size: int = GSM8K_TRAIN_SIZE, val_size: int | None = None
) -> tuple[list[dict], list[dict]]:
    """Shuffle like ``datasets.Dataset.shuffle(seed=seed)``; first ``train_size`` rows train, the rest (or ``val_size``)
    validation."""
    import numpy as np

    n = len(rows)
    if train_size <= 0 or train_size >= n:
        raise PSPOError(f"train_size {train_size} must be between 1 and {n - 1} (the data have {n} rows)")
    rest = n - train_size
    if val_size is not None and not 0 < val_size <= rest:
        raise PSPOError(f"val_size {val_size} must be between 1 and {rest} (rows left after train_size {train_size})")
    perm = np.random.default_rng(seed).permutation(n)
    train = [rows[int(i)] for i in perm[:train_size]]
    val = [rows[int(i)] for i in perm[train_size : train_size + (rest if val_size is None else val_size)]]
    return train, val


# ---------------------------------------------------------------------------------------------- writing (the workflow's data rules)
def _ids_sha256(rows: Sequence[dict]) -> str:
    return hashlib.sha256("\n".join(r["id"] for r in rows).encode()).hexdigest()


def _input_record(name: str, source: str, data_dir: str | os.PathLike | None) -> tuple[dict, list[Path]]:
    """What a written file was made from: the local file and its sha256, or the hub dataset."""
    from pspo.provenance import file_sha256

    if name in GENERATED:
        return {"source": "generated", "generator": "pspo.arith", "input_sha256": None}, []
    if source == "local":
        path = data_file(name, data_dir)
        return {"source": "local", "data_dir": str(path.parent), "input_file": path.name,
                "input_sha256": file_sha256(path)}, [path]
    repo, config, splits = HUB_DATASETS[name]
    return {"source": "hub", "hub_dataset": repo, "hub_config": config, "hub_splits": list(splits),
            "input_sha256": None}, []


def _write(path: str | os.PathLike, rows: list[dict], record: dict, data_files: Sequence[Path] = ()) -> None:
    """Write ``path`` (JSONL) and ``<path stem>.meta.json`` recording every choice, both atomically."""
    from pspo.io import write_json_atomic, write_jsonl_atomic
    from pspo.provenance import provenance

    path = Path(path)
    write_json_atomic(path.with_suffix(".meta.json"),
                      {**record, "rows": len(rows), "ids_sha256": _ids_sha256(rows),
                       "provenance": provenance(data_files=data_files)})
    write_jsonl_atomic(path, rows)
    print(f"{path}: {len(rows)} rows")


def write_train_split(*, seed: int, out_train: str | os.PathLike, out_val: str | os.PathLike, source: str = "local",
                      dir: str | os.PathLike | None = None, train_size: int = GSM8K_TRAIN_SIZE,
                      val_size: int | None = None, train_limit: int | None = None, train_set: str = "gsm8k") -> None:
    """The seed-shuffled train/validation split of ``train_set`` (GSM8K train, or the CPU stand-in pool
    ``arith``); ``train_limit`` keeps the first N training rows (CPU grids)."""
    if train_set not in TRAIN_SETS:
        raise PSPOError(f"unknown train set {train_set!r}; valid: {', '.join(TRAIN_SETS)}")
    pool = TRAIN_SETS[train_set]
    rows = load_benchmark(pool, source=source, data_dir=dir)
    train, val = split_train_val(rows, seed=seed, train_size=train_size, val_size=val_size)
    if train_limit is not None:
        train = train[:train_limit]
    record, files = _input_record(pool, source, dir)
    common = {"benchmark": pool, "train_set": train_set, **record, "seed": seed, "train_size": train_size,
              "train_limit": train_limit, "val_size": len(val), "input_rows": len(rows),
              "shuffle": "numpy.random.default_rng(seed).permutation (== datasets.Dataset.shuffle(seed=seed))"}
    _write(out_train, train, {**common, "part": "train"}, files)
    _write(out_val, val, {**common, "part": "validation"}, files)


def write_eval_rows(*, out: str | os.PathLike, benchmark: str, source: str = "local",
                    dir: str | os.PathLike | None = None, subset: str = "all", limit: int | None = None,
                    seed: int = 0) -> None:
    """The evaluated rows of one benchmark (subset, then a seeded ``limit``), with a record of every choice."""
    canonical(benchmark, BENCHMARKS)
    rows = load_benchmark(benchmark, source=source, data_dir=dir)
    selected = select_eval_rows(benchmark, rows, subset=subset, limit=limit, seed=seed)
    record, files = _input_record(benchmark, source, dir)
    _write(out, selected, {"benchmark": benchmark, **record, "subset": subset, "limit": limit, "limit_seed": seed,
                           "input_rows": len(rows)}, files)


__all__ = [
    "BENCHMARKS", "FILES", "SUBSETS", "HUB_DATASETS", "load_benchmark", "load_hub", "normalize_hub_records",
    "normalize_asdiv_answer", "select_eval_rows", "select_ids", "split_train_val", "resolve_data_dir", "data_file",
    "write_train_split", "write_eval_rows", "resolve_source", "PAPER_BENCHMARKS", "TRAIN_SETS", "GENERATED",
]
