"""The report of a finished grid: every table and figure from the collected results, then index.md listing them.

``build_report`` is the report rule's one call: the config sections it reads (``pspo.config.report_settings``) and
the input files the rule lists (``snakemake.input``, or :func:`pspo.report.plan.report_inputs` outside the workflow).
index.md lists every training run's warnings first (a run without learning signal is no result), then the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from pspo import grid, layout
from pspo.errors import PSPOError
from pspo.io import write_text_atomic
from pspo.report import control, plan
from pspo.report.collect import collect_metrics, collect_train_logs, collect_train_status, paired, summarise
from pspo.report.figures import figure_accuracy, figure_paths, figure_training_curves
from pspo.report.tables import (
    changed_vs_base,
    main_rows,
    main_run_ids,
    provenance_line,
    run_provenance,
    table_alpha_ablation,
    table_hyperparameters,
    table_provenance,
    table_reported,
    table_response_quality,
    table_sampling,
    write_table,
)

CONTROL_TITLE = ("GR-PSPO vs its control GRPO-noclip (mu=2), same seed and data: weight distances relative to "
                 "||θ₀|| (drift ratio = distance between the two over their mean distance from the base) and "
                 "training reward agreement")


def build_report(cfg: dict, inputs: Mapping[str, Sequence[str]], index_path: str | Path) -> None:
    """Every table and figure but Figure 1 (its own rule), and index.md. ``inputs``: lists of files named
    ``metrics``, ``samples`` (aligned with the config's evaluation jobs), ``train_logs``, ``train_summaries``
    (its training jobs) and ``distances`` (its GR-PSPO/control pairs)."""
    R, names = cfg["results_dir"], plan.table_names(cfg)
    status = collect_train_status(cfg, inputs["train_summaries"])
    df = collect_metrics(cfg, inputs["metrics"], status)
    df["changed_vs_base"] = changed_vs_base(df, dict(paired(grid.eval_jobs(cfg), inputs["samples"],
                                                             "samples")))
    summary = summarise(df[df.temperature == 0])
    prov = run_provenance(cfg, df)
    tables: dict[str, tuple[str, pd.DataFrame]] = {
        "hyperparameters": ("Table 1: hyperparameters per model and method (from the resolved config)",
                            table_hyperparameters(cfg)),
    }
    for model in cfg["models"]:
        main = main_rows(cfg, summary, model, main_run_ids(cfg, model))
        tables[f"main_{model}"] = (
            f"Accuracy (%) at T=0 for {cfg['models'][model]['path'] or model}: mean ± std over seeds "
            "[Wilson 95% interval, seeds pooled]", main)
    tables["alpha_ablation"] = ("Alpha ablation: GR-PSPO accuracy (%) per alpha, with the noclip controls",
                                table_alpha_ablation(cfg, summary))
    tables["response_quality"] = ("Response quality at T=0 (means over seeds)", table_response_quality(df))
    tables["reported_vs_reproduced"] = ("The paper's reported accuracies (%) beside this run's",
                                        table_reported(cfg, summary))
    tables["provenance"] = ("Provenance of every number in this report", table_provenance(prov))
    if "sampling" in names:
        tables["sampling"] = ("Sampled evaluation: pass@k and majority vote (%), means over seeds", table_sampling(df))
    logs = collect_train_logs(cfg, inputs["train_logs"])
    if plan.CONTROL_TABLE in names:
        pairs = grid.control_pairs(cfg)
        drift = control.table_control(cfg, pairs, logs, inputs["distances"])
        tables[plan.CONTROL_TABLE] = (CONTROL_TITLE, drift)
        control.figure_control(cfg, pairs, logs, drift, figure_paths(R, plan.CONTROL_FIGURE))
    if list(tables) != names:  # the workflow declared plan.table_names as the rule's outputs
        raise PSPOError(f"the report built tables {list(tables)} but the layout names {names}; make them agree")
    for name, (title, table) in tables.items():
        write_table(table, R, name, title, prov)
    figure_training_curves(logs, figure_paths(R, "training_curves"))
    figure_accuracy(cfg, summary, figure_paths(R, "accuracy"))
    warnings = [f"{model}/{run_id}/seed{seed}: {w}"
                for (model, run_id, seed), run in status.items() for w in run["warnings"]]
    write_index(cfg, Path(index_path), tables, prov, warnings)


def _links(template: str, name: str, exts: Sequence[str]) -> str:
    return " · ".join(f"[{ext}]({template.format(name=name, ext=ext)})" for ext in exts)


def write_index(cfg: dict, path: Path, tables: dict, prov: dict, warnings: Sequence[str] = ()) -> None:
    """index.md: the training runs' warnings first (a run without learning signal is no result), then the files."""
    lines = [f"# Results: {cfg.get('description') or cfg['results_dir']}", ""]
    if warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    lines += [f"Provenance: {provenance_line(prov)}", "", "## Tables", ""]
    for name, (title, _) in tables.items():
        lines.append(f"- {title}: {_links(layout.TABLE, name, ('md', 'csv', 'tex'))}")
    lines += ["", "## Figures", ""]
    for name in plan.figure_names(cfg):
        lines.append(f"- {name}: {_links(layout.FIGURE, name, layout.FIGURE_EXTS)}")
    samples = layout.EVAL_SAMPLES.format(model="<model>", tag="<run>_seed<k>", benchmark="<benchmark>",
                                         temperature="<t>", n="<n>")
    train_log = layout.TRAIN_LOG.format(model="<model>", run_id="<run>", seed="<k>")
    lines += ["", f"Per-sample completions: `{samples}`; training logs: `{train_log}`.", ""]
    for model in cfg["models"]:
        table = tables[f"main_{model}"][1]
        lines += [f"## {model}", "", table.drop(columns=[c for c in table.columns if "_" in c and c != "run_id"])
                  .to_markdown(index=False) if not table.empty else "(no rows)", ""]
    write_text_atomic(path, "\n".join(lines))
