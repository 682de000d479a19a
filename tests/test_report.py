"""The report from synthetic metrics and training summaries: a run without learning signal is no result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pspo import config as C
from pspo import grid as G
from pspo import layout as L
from pspo.report import plan as P
from pspo.report.collect import NOT_TRAINED
from pspo.report.index import build_report

NO_SIGNAL = "no learning signal: every generation step had zero reward spread"


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _metrics(accuracy: float) -> dict:
    n = 20
    return {"accuracy": accuracy, "n": n, "correct": round(accuracy * n), "accuracy_ci95": [0.0, 1.0],
            "mean_completion_tokens": 50.0, "format_rate": 0.9, "truncation_rate": 0.1, "repetition_rate": 0.0,
            "majority_accuracy": accuracy, "pass_at_k": {"1": accuracy, "2": accuracy},
            "provenance": {"data_sha256": {"gsm8k_test.jsonl": "0" * 64}, "versions": {"trl": "1.16.0"}}}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    """Two seeds of a clip run that learned (one summary older than the learning-signal check) and of a pspo run
    that had no learning signal; the model is one the paper reports, so every table has rows."""
    results = tmp_path_factory.mktemp("results")
    cfg = C.load_config({
        "results_dir": str(results), "seeds": [0, 1],
        "models": {"qwen": {"source": "hub", "path": "Qwen/Qwen2.5-0.5B"}},
        "runs": {"clip": {"objective": "clip"}, "pspo": {"objective": "pspo"}},
        "evaluation": {"benchmarks": ["gsm8k", "math500"],
                       "sampled": {"runs": ["pspo"], "temperatures": [0.6], "n_samples": 2}},
    })
    accuracy = {"base": 0.25, "clip": 0.55, "pspo-a0.1": 0.25}
    for job in G.eval_jobs(cfg):
        run_id = "base" if job.tag == L.BASE else L.TAG_RE.match(job.tag)["run_id"]
        _write(results / "eval" / job.model / job.tag / f"{job.stem}.metrics.json", _metrics(accuracy[run_id]))
        # greedy answers: clip changed 2 of 4 from the base model's, pspo (not trained) none
        answers = [f"#### {i}" if run_id != "clip" or i < 2 else "#### 7" for i in range(4)]
        (results / "eval" / job.model / job.tag / f"{job.stem}.samples.jsonl").write_text(
            "".join(json.dumps({"id": f"q{i}", "completion": a}) + "\n" for i, a in enumerate(answers)))
    for job in G.train_jobs(cfg):
        run_dir = results / "train" / job.model / job.run_id / f"seed{job.seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "log.csv").write_text("step,reward,grad_norm\n1,0.5,0.1\n2,0.6,0.2\n")
        if job.run == "pspo":
            summary = {"trained": False, "learning_signal": {"steps": 2, "nonzero_grad_steps": 0},
                       "warnings": [f"{NO_SIGNAL} (seed {job.seed})"]}
        else:
            summary = {} if job.seed == 0 else {"trained": True, "warnings": []}
        _write(run_dir / "summary.json", summary)
    build_report(cfg, P.report_inputs(cfg), results / "index.md")
    return results, cfg


def _table(results: Path, name: str) -> tuple[pd.DataFrame, str, str]:
    stem = results / "report" / "tables" / name
    return (pd.read_csv(f"{stem}.csv", comment="#"), Path(f"{stem}.md").read_text(), Path(f"{stem}.tex").read_text())


def test_untrained_run_reads_not_trained_in_the_main_table(report):
    results, _ = report
    csv, md, tex = _table(results, "main_qwen")
    rows = csv.set_index("run_id")
    assert rows.loc["pspo-a0.1", "GSM8K"] == NOT_TRAINED and not rows.loc["pspo-a0.1", "trained"]
    assert rows.loc["pspo-a0.1", "gsm8k_mean"] == pytest.approx(25.0)  # the CSV keeps the raw numbers
    assert rows.loc["clip", "trained"] and rows.loc["base", "trained"]  # an old summary without the key: trained
    assert rows.loc["clip", "GSM8K"].startswith("55.0 ± 0.0 [")
    pspo_line = next(line for line in md.splitlines() if "pspo-a0.1" in line)
    clip_line = next(line for line in md.splitlines() if "| clip " in line)
    assert pspo_line.count(NOT_TRAINED) == 2 and "25.0" not in pspo_line
    assert "55.0 ± 0.0" in clip_line and NOT_TRAINED not in clip_line
    assert NOT_TRAINED in tex


def test_untrained_run_is_marked_in_every_per_run_table(report):
    results, _ = report
    for name in ("alpha_ablation", "response_quality", "sampling", "reported_vs_reproduced"):
        csv, md, _ = _table(results, name)
        assert "trained" in csv.columns, name
        assert NOT_TRAINED in md, name
    csv, md, _ = _table(results, "reported_vs_reproduced")
    pspo = csv[(csv.benchmark == "GSM8K") & (csv.method == "GR-PSPO")].iloc[0]
    assert pspo["reproduced"] == pytest.approx(25.0) and pspo["note"] == NOT_TRAINED
    clip_line = next(line for line in md.splitlines() if "GRPO-clip" in line)
    assert "55" in clip_line and NOT_TRAINED not in clip_line
    _, md, _ = _table(results, "response_quality")
    base_line = next(line for line in md.splitlines() if "| base " in line)
    assert "90" in base_line and NOT_TRAINED not in base_line  # format % of a trained row stays a number


def test_index_lists_every_warning_first(report):
    results, _ = report
    index = (results / "index.md").read_text()
    assert "## Warnings" in index and index.index("## Warnings") < index.index("## Tables")
    bullets = [line for line in index.splitlines() if line.startswith("- qwen/")]
    assert bullets == [f"- qwen/pspo-a0.1/seed{s}: {NO_SIGNAL} (seed {s})" for s in (0, 1)]
    assert NOT_TRAINED in index  # the main table in the index


def test_index_has_no_warnings_section_when_every_run_learned(report, tmp_path):
    results, cfg = report
    shutil.copytree(results / "eval", tmp_path / "eval")
    shutil.copytree(results / "train", tmp_path / "train")
    for seed in (0, 1):
        _write(tmp_path / "train" / "qwen" / "pspo-a0.1" / f"seed{seed}" / "summary.json", {"trained": True})
    moved = {**cfg, "results_dir": str(tmp_path)}
    build_report(moved, P.report_inputs(moved), tmp_path / "index.md")
    index = (tmp_path / "index.md").read_text()
    assert "## Warnings" not in index and NOT_TRAINED not in index


def test_response_quality_says_how_many_greedy_answers_training_changed(report):
    results, _ = report
    table = pd.read_csv(results / "report" / "tables" / "response_quality.csv", comment="#").set_index("run_id")
    changed = table["% of greedy answers changed vs base"]
    assert (changed.loc["clip"] == 50).all() and (changed.loc["pspo-a0.1"] == 0).all()
    assert changed.loc["base"].isna().all()


def test_reported_table_compares_the_paper_clip_with_the_released_script_too():
    from pspo.report.tables import table_reported

    cfg = C.load_config({
        "seeds": [0], "models": {"qwen": {"source": "hub", "path": "Qwen/Qwen2.5-0.5B"}},
        "runs": {"clip": {"objective": "clip", "grpo": {"num_iterations": 2}},
                 "clip-released": {"objective": "clip", "grpo": {"num_iterations": 2, "epsilon": 0.0}},
                 "pspo": {"objective": "pspo", "grpo": {"num_iterations": 2}}},
    })
    summary = pd.DataFrame([
        {"model": "qwen", "run_id": run_id, "benchmark": "gsm8k", "mean": mean, "std": float("nan"), "seeds": 1,
         "trained": True}
        for run_id, mean in (("clip", 30.0), ("clip-released", 18.0), ("pspo-a0.1", 40.0))])
    table = table_reported(cfg, summary)
    table = table[table.model == "Qwen/Qwen2.5-0.5B"].set_index("method")
    assert table.loc["GRPO-clip", "reproduced"] == 30.0 and table.loc["GR-PSPO", "reproduced"] == 40.0
    released = table.loc["GRPO-clip as released (eps=0, lr 5e-7)"]
    assert released["reproduced"] == 18.0 and released["reported"] == 17.6


def test_reported_numbers_are_the_papers(data_dir):
    """report/reported.csv holds exactly the numbers of PAPER.md's "Reported numbers" table."""
    from pspo.report.tables import reported

    paper = data_dir.parent / "PAPER.md"
    if not paper.is_file():
        pytest.skip(f"{paper} not here")
    section = paper.read_text().split("## Reported numbers", 1)[1].split("\n## ", 1)[0]
    hub = {"Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B", "Qwen2.5-1.5B": "Qwen/Qwen2.5-1.5B",
           "Qwen2-Math-1.5B": "Qwen/Qwen2-Math-1.5B"}
    bench = {"GSM8K": "gsm8k", "MATH": "math500"}
    expected = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0] in hub:
            for objective, cell in (("pspo", cells[2]), ("clip", cells[3])):
                if cell != "not known":
                    expected.add((hub[cells[0]], bench[cells[1]], objective, float(cell)))
    assert len(expected) == 6 and set(reported()) == expected
