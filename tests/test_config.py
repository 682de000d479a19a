"""The workflow config: schema defaults, one-line errors, and the job grid it implies."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml

from conftest import REPO
from pspo import config as C
from pspo import grid as G
from pspo import layout as L
from pspo.errors import PSPOError


def raw(name: str = "cpu") -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["config", "cpu", "cpu-study", "ci"])
def test_shipped_configs_validate(name):
    cfg = C.load_config(REPO / "config" / f"{name}.yaml")
    assert cfg["seeds"] and cfg["models"] and cfg["runs"]
    # every grid evaluates the paper's four; the CPU grids add the stand-in task's held-out set. The CPU study
    # evaluates the stand-in only (its header: GSM8K carries no signal at 135M and would not fit one session).
    if name == "cpu-study":
        assert cfg["evaluation"]["benchmarks"] == ["arith"] and cfg["data"]["eval_limits"]["arith"] >= 100
    else:
        assert "gsm8k" in cfg["evaluation"]["benchmarks"]
    if name != "config":
        assert cfg["data"]["train_set"] == "arith" and "arith" in cfg["evaluation"]["benchmarks"]


def test_defaults_are_filled_in():
    cfg = C.load_config({"models": {"m": {"source": "hub", "path": "org/m"}}, "runs": {"p": {"objective": "pspo"}},
                         "seeds": [0]})
    assert cfg["data"]["train_size"] == 7000 and cfg["data"]["val_size"] is None
    assert cfg["evaluation"]["max_new_tokens"] == 128
    assert cfg["models"]["m"]["train_resources"] == {"gpus": 0, "threads": 2, "mem_mb": 8000, "runtime": 60,
                                                     "processes": None, "nodes": 1, "accelerate_config": None}
    assert cfg["alphas"] == [0.1] and cfg["main_alpha"] == 0.1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(alphas=[1.5]), "alphas.0: 1.5 is greater than the maximum of 1"),
        (lambda r: r.update(alphas=[-0.1]), "alphas.0: -0.1 is less than the minimum of 0"),
        (lambda r: r.update(seeds=[]), "seeds: [] should be non-empty"),
        (lambda r: r["runs"]["pspo"].update(objective="ppo"), "runs.pspo.objective = 'ppo' is not valid"),
        (lambda r: r["evaluation"].update(benchmarks=["gsm8k", "mmlu"]), "'mmlu' is not valid; choose one of"),
        (lambda r: r.update(evaluaton={}), "unknown key 'evaluaton' in (top level); did you mean 'evaluation'?"),
        (lambda r: r["data"].update(sorce="hub"), "unknown key 'sorce' in data; did you mean 'source'?"),
        (lambda r: r["training"]["grpo"].update(learnig_rate=1e-6), "did you mean 'learning_rate'?"),
        (lambda r: r["runs"]["pspo"]["grpo"].update(smoothing_alpha=0.3), "is set by the workflow"),
        (lambda r: r["models"]["smollm2-135m"].update(runs=["ppo"]), "names unknown run 'ppo'"),
        (lambda r: r["models"]["smollm2-135m"].update(source="s3"), "is not valid; choose one of"),
        (lambda r: r.update(main_alpha=0.3), "main_alpha 0.3 is not one of alphas"),
        (lambda r: r.update(seeds=[0, 0]), "has duplicates"),
        (lambda r: r["models"]["smollm2-135m"]["train_resources"].update(gpus=2, processes=3),
         "models.smollm2-135m.train_resources: processes 3 with gpus 2: a run has one rank per GPU"),
        (lambda r: r["models"]["smollm2-135m"]["train_resources"].update(accelerate_config="zero3"),
         "accelerate_config 'zero3' shards training over GPUs; it needs gpus >= 2"),
        (lambda r: r["models"]["smollm2-135m"]["train_resources"].update(accelerate_config="zero4"),
         "accelerate_config = 'zero4' is not valid; choose one of"),
        (lambda r: r["models"]["smollm2-135m"]["train_resources"].update(processes=7),
         "7 processes, but run clip's gradient_accumulation_steps 1 does not divide by 7"),
        (lambda r: r["models"]["smollm2-135m"]["eval_resources"].update(gpus=4), "eval_resources.gpus is 4"),
        (lambda r: r["evaluation"]["sampled"].update(runs=["nope"]), "unknown run 'nope'"),
    ],
)
def test_bad_config_is_one_clear_line(mutate, message):
    r = raw()
    mutate(r)
    with pytest.raises(PSPOError) as info:
        C.load_config(r)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_grpo_field_list_matches_installed_trl():
    from trl import GRPOConfig

    assert C.grpo_config_fields() == {f.name for f in dataclasses.fields(GRPOConfig) if f.init}


def test_alpha_independent_runs_are_trained_once():
    cfg = C.load_config(raw("cpu-study"))
    jobs = G.train_jobs(cfg)
    per_run = {}
    for job in jobs:
        per_run.setdefault(job.run, set()).add((job.alpha, job.seed))
    assert per_run["clip"] == {(None, 0), (None, 1), (None, 2)}
    assert per_run["pspo"] == {(a, s) for a in (0.1, 0.5) for s in (0, 1, 2)}
    assert len({j.tag for j in jobs}) == len(jobs)
    assert {j.run_id for j in jobs} >= {"pspo-a0.1", "pspo-a0.5", "noclip-mu2"}


def test_paper_grid_job_counts():
    cfg = C.load_config(REPO / "config" / "config.yaml")
    train = G.train_jobs(cfg)
    # 0.5B and 1.5B: clip, clip-released, noclip, noclip-mu2, sigmoid + 4 alphas = 9 runs; Qwen2-Math: clip,
    # sigmoid + 4 alphas.
    assert len(train) == (9 + 9 + 6) * 5
    evals = G.eval_jobs(cfg)
    t0 = [e for e in evals if e.temperature == 0]
    assert len(t0) == (len(train) + 3) * 4  # every checkpoint + each base model, on four benchmarks
    assert sum(e.tag == L.BASE for e in t0) == 3 * 4  # the base model is evaluated once per benchmark


def test_grpo_settings_precedence():
    cfg = C.load_config(REPO / "config" / "config.yaml")
    clip_job = G.find_train_job(cfg, "qwen2.5-0.5b", "clip", 3)
    clip_05 = G.grpo_settings(cfg, clip_job)
    assert (clip_05["epsilon"], clip_05["learning_rate"], clip_05["num_iterations"]) == (0.1, 1e-6, 2)
    # the job's identity travels beside its GRPO fields, not inside them
    assert clip_job.objective(cfg) == "clip" and clip_job.seed == 3 and clip_job.alpha is None
    assert not {"objective", "seed", "smoothing_alpha"} & clip_05.keys()
    pspo_job = G.find_train_job(cfg, "qwen2.5-1.5b", "pspo-a0.2", 0)
    pspo = G.grpo_settings(cfg, pspo_job)
    assert (pspo_job.alpha, pspo["learning_rate"], pspo["num_iterations"]) == (0.2, 5e-7, 2)
    assert pspo["per_device_train_batch_size"] * pspo["gradient_accumulation_steps"] == 64
    noclip = G.grpo_settings(cfg, G.TrainJob("qwen2.5-1.5b", "noclip", None, 0))
    assert noclip["num_iterations"] == 1 and noclip["learning_rate"] == 1e-6


def test_job_params_depend_only_on_what_they_use():
    """Changing one config value changes the params (Snakemake's rerun trigger) only of the jobs that use it."""
    base = C.load_config(raw())
    changed = copy.deepcopy(base)
    changed["data"]["eval_limit"] = 7
    changed["evaluation"]["sampled"]["temperatures"] = [0.3]
    assert C.split_settings(changed) == C.split_settings(base)
    assert C.generation_settings(changed, 0.0, 1) == C.generation_settings(base, 0.0, 1)
    assert C.eval_data_settings(changed, "gsm8k") != C.eval_data_settings(base, "gsm8k")
    subset = copy.deepcopy(base)
    subset["data"]["asdiv_subset"] = "pal2096"
    assert C.eval_data_settings(subset, "svamp") == C.eval_data_settings(base, "svamp")
    assert C.eval_data_settings(subset, "asdiv") != C.eval_data_settings(base, "asdiv")
    job = G.TrainJob("smollm2-135m", "clip", None, 0)
    changed["runs"]["pspo"]["grpo"]["learning_rate"] = 9e-9
    assert G.grpo_settings(changed, job) == G.grpo_settings(base, job)


def test_unknown_training_job_lists_valid_runs():
    cfg = C.load_config(raw("cpu-study"))
    with pytest.raises(PSPOError, match="runs for smollm2-135m: clip, noclip, noclip-mu2, pspo-a0.1, pspo-a0.5, sigmoid"):
        G.find_train_job(cfg, "smollm2-135m", "pspo-a0.3", 0)


def test_command_line_strings_become_numbers_where_the_schema_wants_them():
    """Snakemake's --config leaves nested values as strings ('4'); the loader converts them, nothing else."""
    r = raw("ci")
    r["training"]["grpo"].update(max_steps="4", learning_rate="1e-6", bf16="false", optim="adamw_torch")
    r["training"]["keep_checkpoints"] = "4"
    r["data"].update(svamp_subset="300", eval_limit="7")
    cfg = C.load_config(r)
    grpo = cfg["training"]["grpo"]
    assert (grpo["max_steps"], grpo["learning_rate"], grpo["bf16"], grpo["optim"]) == (4, 1e-6, False, "adamw_torch")
    assert cfg["training"]["keep_checkpoints"] == 4 and cfg["data"]["eval_limit"] == 7
    assert cfg["data"]["svamp_subset"] == "300"  # a string where the schema wants one
    r["training"]["keep_checkpoints"] = "four"
    with pytest.raises(PSPOError, match="training.keep_checkpoints: 'four' is not of type 'integer'"):
        C.load_config(r)
