"""Which tables and figures the report makes for a config, and the files it reads: the report rule's inputs and
outputs. Light (no pandas): the Snakefile reads it to plan the DAG."""

from __future__ import annotations

from pspo import layout
from pspo.grid import control_pairs, eval_jobs, train_jobs

SURROGATE_FIGURE = "figure1_surrogate"  # made by its own rule, before the report
FIGURES = (SURROGATE_FIGURE, "training_curves", "accuracy")
CONTROL_TABLE = CONTROL_FIGURE = "pspo_vs_control"  # GR-PSPO against its GRPO-noclip (mu = 2) control


def table_names(cfg: dict) -> list[str]:
    """The report's tables, in the order index.md lists them."""
    names = ["hyperparameters"] + [f"main_{m}" for m in cfg["models"]]
    names += ["alpha_ablation", "response_quality", "reported_vs_reproduced", "provenance"]
    if cfg["evaluation"]["sampled"]["runs"] and cfg["evaluation"]["sampled"]["temperatures"]:
        names.append("sampling")
    if control_pairs(cfg):
        names.append(CONTROL_TABLE)
    return names


def figure_names(cfg: dict) -> list[str]:
    """FIGURES, plus GR-PSPO against its control where the grid trains both."""
    return list(FIGURES) + ([CONTROL_FIGURE] if control_pairs(cfg) else [])


def report_inputs(cfg: dict) -> dict[str, list[str]]:
    """The files the report reads, each list in the order of the config's jobs: the report rule's input."""
    R, evals, trains = cfg["results_dir"], eval_jobs(cfg), train_jobs(cfg)
    return {
        "metrics": [layout.eval_path(R, layout.EVAL_METRICS, j) for j in evals],
        "samples": [layout.eval_path(R, layout.EVAL_SAMPLES, j) for j in evals],
        "train_logs": [layout.train_path(R, layout.TRAIN_LOG, j) for j in trains],
        "train_summaries": [layout.train_path(R, layout.TRAIN_SUMMARY, j) for j in trains],
        "distances": [layout.path(R, layout.DISTANCE, model=j.model, tag=j.tag) for j, _ in control_pairs(cfg)],
    }
