"""Each fact defined once: the results layout (pspo.layout) and the benchmark registry (pspo.benchmarks), held to
README's "Results layout" section and to the config schema's enums."""

from __future__ import annotations

import re

import yaml

from conftest import REPO
from pspo import config as C
from pspo import grid as G
from pspo import layout as L
from pspo.benchmarks import BENCHMARKS, REGISTRY, TRAIN_SETS
from pspo.objectives import OBJECTIVES
from pspo.report import plan as P
from pspo.rewards import REWARD_FUNCTIONS

# README's placeholders for the layout's fields
SHOWN = dict(model="<model>", run_id="<run>", seed="<k>", tag="<run>_seed<k>", benchmark="<bench>", temperature="<t>",
             n="<n>", name="<name>")


def _readme_layout() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Results layout"):]
    return section[section.index("```") + 3:].split("```", 1)[0]


def _shown(template: str, **fields) -> str:
    return template.format(**{**SHOWN, **fields})


def _alternatives(*tails: str) -> str:
    return "{" + ",".join(tails) + "}"


def test_readme_results_layout_is_the_layout_module():
    block = _readme_layout()
    train_dir = _shown(L.TRAIN_DIR)
    train_files = [_shown(t)[len(train_dir) + 1:] for t in (L.TRAIN_MODEL, L.TRAIN_LOG, L.TRAIN_SUMMARY)]
    expected = [
        L.INDEX,
        _shown(L.TABLE, ext=_alternatives(*L.TABLE_EXTS)),
        _shown(L.FIGURE, ext=_alternatives(*L.FIGURE_EXTS)),
        _shown(L.EVAL_PREFIX) + "." + _alternatives("samples.jsonl", "metrics.json"),
        f"{train_dir}/" + _alternatives("model/", *train_files[1:]),
        _shown(L.DISTANCE, tag="<pspo run>_seed<k>"),
        _shown(L.CHECKPOINTS) + "/",
    ]
    assert [_shown(L.EVAL_SAMPLES)[: -len(".samples.jsonl")], _shown(L.EVAL_METRICS)[: -len(".metrics.json")]] == [
        _shown(L.EVAL_PREFIX)] * 2
    assert train_files[0] == "model"
    for path in expected:
        assert path in block, path
    assert f"(base model: {_shown(L.EVAL_PREFIX).split('/<run>')[0]}/{L.BASE}/)" in block
    assert ", ".join(P.FIGURES) in block


def test_readme_lists_every_table_name():
    raw = yaml.safe_load((REPO / "config" / "cpu-study.yaml").read_text())  # trains the control
    raw["evaluation"]["sampled"] = {"runs": ["pspo"], "temperatures": [0.6]}  # and samples: every table
    cfg = C.load_config(raw)
    names = [re.sub(r"^main_.*", "main_<model>", n) for n in P.table_names(cfg)]
    assert "sampling" in names and P.CONTROL_TABLE in names
    listed = re.sub(r"\s+", " ", _readme_layout().split(".{csv,md,tex}", 1)[1].split("report/figures", 1)[0]).strip()
    assert listed == ", ".join(names)


def test_paths_fill_for_one_job():
    job = G.TrainJob("m", "pspo", 0.1, 2)
    assert L.train_path("R", L.TRAIN_LOG, job) == "R/train/m/pspo-a0.1/seed2/log.csv"
    ev = G.EvalJob("m", job.tag, "gsm8k", 0.6, 4)
    assert L.eval_path("R", L.EVAL_METRICS, ev) == f"R/eval/m/pspo-a0.1_seed2/{ev.stem}.metrics.json"
    assert ev.stem == "gsm8k_T0.6_n4" and L.eval_model_dir("R", "m", job.tag) == "R/train/m/pspo-a0.1/seed2/model"
    assert L.eval_model_dir("R", "m", L.BASE) == "R/models/m"


def test_report_inputs_follow_the_jobs():
    cfg = C.load_config(REPO / "config" / "cpu-study.yaml")
    inputs = P.report_inputs(cfg)
    assert len(inputs["metrics"]) == len(inputs["samples"]) == len(G.eval_jobs(cfg))
    assert len(inputs["train_logs"]) == len(inputs["train_summaries"]) == len(G.train_jobs(cfg))
    assert all(p.endswith(".metrics.json") for p in inputs["metrics"])
    assert len(inputs["distances"]) == 2 * 3  # alphas x seeds


def test_schema_enums_are_the_registries():
    schema = yaml.safe_load(C.SCHEMA_PATH.read_text())["properties"]
    data, evaluation = schema["data"]["properties"], schema["evaluation"]["properties"]
    assert evaluation["benchmarks"]["items"]["enum"] == list(BENCHMARKS)
    assert evaluation["sampled"]["properties"]["benchmarks"]["items"]["enum"] == list(BENCHMARKS)
    assert data["eval_limits"]["propertyNames"]["enum"] == list(BENCHMARKS)
    assert data["train_set"]["enum"] == list(TRAIN_SETS)
    assert data["asdiv_subset"]["enum"] == list(REGISTRY["asdiv"].subsets)
    assert data["svamp_subset"]["enum"] == list(REGISTRY["svamp"].subsets)
    assert schema["training"]["properties"]["reward"]["enum"] == list(REWARD_FUNCTIONS)
    run = yaml.safe_load(C.SCHEMA_PATH.read_text())["$defs"]["run"]
    assert run["properties"]["objective"]["enum"] == list(OBJECTIVES)


def test_alpha_default_is_defined_once():
    cfg = C.load_config({"models": {"m": {"source": "hub", "path": "org/m"}}, "runs": {"p": {"objective": "pspo"}},
                         "seeds": [0]})
    assert cfg["alphas"] == [cfg["main_alpha"]] == [C.schema_default("main_alpha")]  # PSPOConfig's: test_trainer
    assert C.schema_default("training", "keep_checkpoints_after_training") is False
