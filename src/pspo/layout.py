"""The results layout: every path the workflow writes under ``results_dir``.

The path templates are Snakemake wildcard patterns (``{model}``, ``{run_id}``...): the rules use them as they are,
and :func:`path` fills them for one job. README's "Results layout" section is checked against them by a test.
Imports nothing of ``pspo``: every other module may use it.
"""

from __future__ import annotations

import re

BASE = "base"  # the tag of the untrained model in evaluation paths
TAG = "{run_id}_seed{seed}"  # a tag names one evaluated model: BASE or this
TAG_RE = re.compile(r"^(?P<run_id>.+)_seed(?P<seed>\d+)$")
EVAL_STEM = "{benchmark}_T{temperature}_n{n}"  # T formatted with :g; the stem holds dots (T0.6): no with_suffix

# The GPU path checked once per grid before any training or evaluation job (pspo.preflight).
PREFLIGHT = "preflight/ready.json"
# Inputs the workflow prepares.
MODEL = "models/{model}"
TRAIN_SPLIT = "data/train_seed{seed}.jsonl"
VAL_SPLIT = "data/val_seed{seed}.jsonl"
EVAL_DATA = "data/eval/{benchmark}.jsonl"
# Training: the outputs of one run, and its checkpoints outside them (a failed job keeps those).
TRAIN_DIR = "train/{model}/{run_id}/seed{seed}"
TRAIN_MODEL = TRAIN_DIR + "/model"
TRAIN_LOG = TRAIN_DIR + "/log.csv"
TRAIN_SUMMARY = TRAIN_DIR + "/summary.json"
CHECKPOINTS = "checkpoints/{model}/{run_id}/seed{seed}"
# Evaluation of one model (tag) on one benchmark at one temperature.
EVAL_PREFIX = "eval/{model}/{tag}/" + EVAL_STEM
EVAL_SAMPLES = EVAL_PREFIX + ".samples.jsonl"
EVAL_METRICS = EVAL_PREFIX + ".metrics.json"
# GR-PSPO against its GRPO-noclip (mu=2) control: one file per GR-PSPO run (its tag).
DISTANCE = "control/{model}/{tag}.json"
# The report.
TABLE = "report/tables/{name}.{ext}"
FIGURE = "report/figures/{name}.{ext}"
INDEX = "index.md"
# Each rule's own log.
LOG_PREFLIGHT = "logs/preflight.log"
LOG_SPLIT = "logs/data/split_seed{seed}.log"
LOG_EVAL_DATA = "logs/data/eval_{benchmark}.log"
LOG_MODEL = "logs/models/{model}.log"
LOG_TRAIN = "logs/train/{model}/{run_id}/seed{seed}.log"
LOG_EVAL = "logs/eval/{model}/{tag}/" + EVAL_STEM + ".log"
LOG_DISTANCE = "logs/control/{model}/{tag}.log"
LOG_FIGURE1 = "logs/report/figure1.log"
LOG_REPORT = "logs/report/report.log"

TABLE_EXTS = ("csv", "md", "tex")
FIGURE_EXTS = ("png", "pdf")


def path(results_dir: str, template: str, **fields) -> str:
    """``template`` under ``results_dir`` with its fields filled in (a float temperature is written with :g)."""
    if isinstance(fields.get("temperature"), float):
        fields["temperature"] = f"{fields['temperature']:g}"
    return f"{results_dir}/{template.format(**fields)}"


def record(template: str) -> str:
    """The ``.meta.json`` beside a JSONL file the data stage writes (every choice that made it; ``pspo.data``)."""
    return template.removesuffix(".jsonl") + ".meta.json"


def train_path(results_dir: str, template: str, job) -> str:
    """A training template (TRAIN_*, CHECKPOINTS) filled for one ``pspo.grid.TrainJob``."""
    return path(results_dir, template, model=job.model, run_id=job.run_id, seed=job.seed)


def eval_path(results_dir: str, template: str, job) -> str:
    """An evaluation template (EVAL_*) filled for one ``pspo.grid.EvalJob``."""
    return path(results_dir, template, model=job.model, tag=job.tag, benchmark=job.benchmark,
                temperature=job.temperature, n=job.n_samples)


def eval_model_dir(results_dir: str, model: str, tag: str) -> str:
    """The model an evaluation reads: the prepared base model, or a training run's final model."""
    if tag == BASE:
        return path(results_dir, MODEL, model=model)
    match = TAG_RE.match(tag)
    return path(results_dir, TRAIN_MODEL, model=model, run_id=match["run_id"], seed=match["seed"])


def report_files(results_dir: str, tables: list[str], figures: list[str]) -> dict[str, list[str]]:
    """Every file of the report: each table in each of TABLE_EXTS, each figure in each of FIGURE_EXTS."""
    return {
        "tables": [path(results_dir, TABLE, name=n, ext=e) for n in tables for e in TABLE_EXTS],
        "figures": [path(results_dir, FIGURE, name=n, ext=e) for n in figures for e in FIGURE_EXTS],
    }
