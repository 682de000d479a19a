"""End to end: the CI config through the real Snakemake DAG, then the caching guarantees users rely on.

One full run (prepare data and model, evaluate the base model, train every objective, evaluate every checkpoint,
build every table and figure) into a temporary results directory; the later tests reuse it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pspo import config as C
from pspo import layout as L

from conftest import REPO

pytestmark = pytest.mark.slow


def snakemake(*args: str, results_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/ci.yaml",
           "--config", f"results_dir={results_dir}", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=3600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    results = tmp_path_factory.mktemp("ci-results")
    snakemake(results_dir=results)
    cfg = C.load_config(REPO / "config" / "ci.yaml")
    cfg["results_dir"] = str(results)
    return results, cfg


def test_every_table_and_figure_exists_and_is_non_empty(ci_run):
    results, cfg = ci_run
    for name in L.table_names(cfg):
        for ext in ("csv", "md", "tex"):
            path = results / "report" / "tables" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
    for name in L.figure_names(cfg):
        for ext in ("png", "pdf"):
            path = results / "report" / "figures" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    assert (results / "index.md").read_text().count("report/tables/") >= len(L.table_names(cfg))


def test_main_table_has_every_method_and_benchmark(ci_run):
    results, cfg = ci_run
    table = pd.read_csv(results / "report" / "tables" / "main_smollm2-135m.csv", comment="#")
    assert list(table.run_id) == ["base", "clip", "noclip", "noclip-mu2", "sigmoid", "pspo-a0.1"]
    for b in ("gsm8k", "svamp", "asdiv", "math500"):
        assert table[f"{b}_mean"].between(0, 100).all()
    md = (results / "report" / "tables" / "main_smollm2-135m.md").read_text()
    assert "config " in md and "commit " in md and "torch " in md  # provenance footer


def test_metrics_carry_provenance_and_match_their_samples(ci_run):
    from pspo.evaluation import metrics_from_samples

    results, cfg = ci_run
    for job in C.eval_jobs(cfg):
        stem = results / "eval" / job.model / job.tag / job.stem  # the stem holds dots (T0.6): no with_suffix
        metrics = json.loads(Path(f"{stem}.metrics.json").read_text())
        prov = metrics["provenance"]
        assert prov["versions"]["trl"] == "1.16.0" and prov["data_sha256"]
        recomputed = metrics_from_samples(f"{stem}.samples.jsonl")
        assert recomputed["accuracy"] == metrics["accuracy"] and recomputed["n"] == metrics["n"]


def test_training_logs_show_the_objectives_differ_only_on_reuse(ci_run):
    results, cfg = ci_run
    for job in C.train_jobs(cfg):
        log = pd.read_csv(results / "train" / job.model / job.run_id / f"seed{job.seed}" / "log.csv", comment="#")
        assert len(log) >= 1 and log["reward"].notna().any()
        summary = json.loads((results / "train" / job.model / job.run_id / f"seed{job.seed}" / "summary.json").read_text())
        assert summary["provenance"]["versions"]["trl"] == "1.16.0"
        if cfg["runs"][job.run]["grpo"].get("num_iterations", 1) == 1:
            # mu = 1: the ratio is exactly 1 in value (tests/test_trainer.py shows mu = 2 moving it)
            assert (log["objective/ratio_max"] == 1).all() and (log["objective/ratio_min"] == 1).all()


def test_ci_grid_learns(ci_run):
    """Every run of the finished CI grid got a learning signal: real gradients, and mu = 2 moved the ratio.

    The CI grid trains on the CPU stand-in task with 4 groups per generation batch; a run whose groups all got
    equal rewards would have zero gradients and equal its base model (the failure this guards against).
    """
    results, cfg = ci_run
    for job in C.train_jobs(cfg):
        run_dir = results / "train" / job.model / job.run_id / f"seed{job.seed}"
        log = pd.read_csv(run_dir / "log.csv", comment="#")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["trained"] and not summary["warnings"], (job.tag, summary["warnings"])
        assert (log["grad_norm"] > 0).mean() >= 0.8, job.tag
        assert (log["reward_std"].dropna() > 0).any(), job.tag
        assert summary["weight_change_from_base"]["relative_l2"] > 0, job.tag
        if cfg["runs"][job.run]["grpo"].get("num_iterations", 1) == 2:
            assert (log["objective/ratio_std"] > 0).any(), job.tag  # the reused pass is off-policy
    index = (results / "index.md").read_text()
    assert "## Warnings" not in index and "not trained" not in (
        results / "report" / "tables" / "main_smollm2-135m.md").read_text()


def test_second_run_has_nothing_to_do(ci_run):
    results, _ = ci_run
    proc = snakemake("-n", results_dir=results)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_one_value_reruns_only_what_depends_on_it(ci_run):
    results, _ = ci_run
    proc = snakemake("-n", "--config", f"results_dir={results}", "evaluation={max_new_tokens: 12}",
                     results_dir=results)
    out = proc.stdout + proc.stderr
    assert "evaluate" in out and "report" in out
    assert "\ntrain " not in out and "split_train" not in out and "prepare_model" not in out


def test_snakemake_report_builds_one_html(ci_run, tmp_path):
    results, _ = ci_run
    html = tmp_path / "report.html"
    snakemake("--report", str(html), results_dir=results)
    assert html.stat().st_size > 10_000
