"""Bad input: one clear line naming the problem and the fix, and nothing partial left behind.

Each case goes through the entry point a user would hit: `snakemake` for config problems, the package functions
(and `pspo` commands) for the rest.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pspo.errors import PSPOError

from conftest import REPO


def snakemake_dry_run(tmp_path: Path, *config: str, targets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "snakemake", *targets, "-n", "--cores", "1", "--configfile", "config/ci.yaml",
           "--config", f"results_dir={results}", *config]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "override, message",
    [
        ("alphas=[1.5]", "config: alphas.0"),
        ("seeds=[]", "config: seeds: [] should be non-empty"),
        ('runs={"pspo": {"objective": "ppo"}}', "runs.pspo.objective = 'ppo' is not valid"),
        ('evaluation={"benchmarks": ["gsm8k", "mmlu"]}', "'mmlu' is not valid"),
        ('training={"grpo": {"learnig_rate": 1.0e-6}}', "did you mean 'learning_rate'?"),
        ('data={"dir": "/nonexistent/data"}', "does not exist (looking for gsm8k_test.jsonl)"),  # trains on the generated stand-in
        ('models={"smollm2-135m": {"runs": ["ppo"]}}', "names unknown run 'ppo'"),
    ],
)
def test_bad_config_stops_the_workflow_with_one_line(tmp_path, override, message):
    proc = snakemake_dry_run(tmp_path, override)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_pspo_from_elsewhere_is_refused_before_any_job(tmp_path):
    """The jobs import the installed pspo: one from another checkout would run other code, so the workflow stops."""
    (tmp_path / "pspo").mkdir()
    (tmp_path / "pspo" / "__init__.py").write_text("")
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/ci.yaml",
           "--config", f"results_dir={tmp_path / 'results'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"pspo is imported from {tmp_path / 'pspo'}, not this checkout's" in errors[0], errors
    assert "pip install -e" in errors[0] and not (tmp_path / "results").exists()


def test_several_nodes_without_slurm_is_one_line_before_any_job(tmp_path):
    import yaml

    config = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    config["results_dir"] = str(tmp_path / "results")
    for model in config["models"].values():
        model.setdefault("train_resources", {})["nodes"] = 2
    config["training"]["grpo"]["gradient_accumulation_steps"] = 2  # 2 nodes x 1 rank: the global batch divides
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(tmp_path / "nodes.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: models smollm2-135m train over several nodes (train_resources.nodes > 1), which runs "
                      "under SLURM only: use --profile slurm, or set nodes: 1"], proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_data_directory_missing_a_file(tmp_path, data_dir):
    for name in ("gsm8k_train.jsonl", "gsm8k_test.jsonl", "svamp.jsonl", "asdiv.jsonl"):
        os.symlink(data_dir / name, tmp_path / name)
    proc = snakemake_dry_run(tmp_path, f'data={{"dir": "{tmp_path}"}}')
    assert proc.returncode != 0
    assert f"error: math500.jsonl not found in {tmp_path}; set `data.dir` in the config" in proc.stdout + proc.stderr


def test_unknown_model_target_is_refused(tmp_path):
    target = str(tmp_path / "results" / "train" / "gpt-5" / "clip" / "seed0" / "log.csv")
    proc = snakemake_dry_run(tmp_path, targets=(target,))
    assert proc.returncode != 0
    assert "MissingRuleException" in proc.stdout + proc.stderr and "gpt-5" in proc.stdout + proc.stderr


def test_hub_model_without_network_or_cache(tmp_path, monkeypatch):
    from pspo.models import prepare_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    out = tmp_path / "models" / "qwen"
    with pytest.raises(PSPOError) as info:
        prepare_model("hub", out, path="Qwen/Qwen2.5-0.5B")
    message = str(info.value)
    assert "\n" not in message and "needs internet" in message and "login node" in message
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_model_directory_without_weights(tmp_path):
    from pspo.models import check_model_dir

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PSPOError, match="has no weights"):
        check_model_dir(tmp_path)
    with pytest.raises(PSPOError, match="not a model directory"):
        check_model_dir(tmp_path.parent)


def test_no_gpu_for_a_gpu_sized_job():
    import torch

    from pspo.device import ensure_gpu

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PSPOError, match=r"\(model qwen2.5-1.5b/base\); no GPU here: use config/cpu.yaml .*--profile slurm"):
        ensure_gpu("qwen2.5-1.5b/base")


def test_gpu_that_torch_cannot_use_names_the_driver(tmp_path, monkeypatch):
    """nvidia-smi sees a GPU but torch.cuda.is_available() is false (e.g. a CUDA 13 torch on a driver < 580)."""
    import torch

    from pspo.device import ensure_gpu

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H200, 550.54.15'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PSPOError, match=r"nvidia-smi sees 1 GPU \(NVIDIA H200\) \(driver 550.54.15\) but torch .* "
                                        r"\(built for CUDA .*\) cannot use it: .*driver"):
        ensure_gpu("qwen2.5-1.5b/base")


def test_disk_full_while_saving_leaves_nothing(tmp_path, monkeypatch):
    from pspo import io

    target = tmp_path / "out" / "metrics.json"

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full_disk)
    with pytest.raises(PSPOError, match="disk full while writing .*metrics.json \\(nothing was left behind\\)"):
        io.write_json_atomic(target, {"accuracy": 1.0})
    assert list(target.parent.iterdir()) == []


def test_malformed_jsonl_row_names_file_and_line(tmp_path):
    from pspo.io import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a", "completion": "1"}\n{"id": "b", "completion": \n')
    with pytest.raises(PSPOError, match=r"rows.jsonl:2: malformed JSON row"):
        read_jsonl(path)


def test_every_completion_empty_is_refused_and_writes_nothing(tmp_path, smollm2_dir):
    from transformers import AutoTokenizer

    from pspo.evaluation import evaluate
    from pspo.evaluation.sampling import Completion
    from pspo.io import write_jsonl_atomic

    class SilentModel:
        """A backend whose model emits EOS at once, as a model with a broken chat template or EOS token does."""

        name, dtype, device = "stub", "float32", "cpu"
        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)

        def generate(self, prompts, n, **kwargs):
            return [[Completion(text="", token_ids=[2], finish_reason="stop") for _ in range(n)] for _ in prompts]

    data = tmp_path / "rows.jsonl"
    write_jsonl_atomic(data, [{"id": f"q{i}", "question": f"What is {i}+1?", "answer": str(i + 1), "solution": None,
                               "meta": {}} for i in range(3)])
    out = tmp_path / "out"
    with pytest.raises(PSPOError, match=r"every completion of .* on gsm8k is empty \(the model stops at once\)"):
        evaluate(model_dir=smollm2_dir, benchmark="gsm8k", data_file=data, out_samples=out / "s.jsonl",
                 out_metrics=out / "m.json", generator=SilentModel(), progress=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_existing_results_of_another_config_are_never_silently_overwritten(tmp_path, smollm2_dir):
    """`pspo evaluate` onto a metrics file made with other settings: one line, both files untouched."""
    from pspo.cli import main as cli_main
    from pspo.io import write_jsonl_atomic

    data = tmp_path / "rows.jsonl"
    write_jsonl_atomic(data, [{"id": "q0", "question": "What is 2+3?", "answer": "5", "solution": None, "meta": {}}])
    out_s, out_m = tmp_path / "s.jsonl", tmp_path / "m.json"
    common = ["evaluate", "--model-dir", str(smollm2_dir), "--benchmark", "gsm8k", "--data-file", str(data),
              "--out-samples", str(out_s), "--out-metrics", str(out_m), "--threads", "1", "--no-progress"]
    assert cli_main(common + ["--max-new-tokens", "4"]) == 0
    assert cli_main(common + ["--max-new-tokens", "4"]) == 0  # the same configuration may be recomputed
    before = (out_s.read_bytes(), out_m.read_bytes())
    assert cli_main(common + ["--max-new-tokens", "6"]) == 2
    assert (out_s.read_bytes(), out_m.read_bytes()) == before
    assert cli_main(common + ["--max-new-tokens", "6", "--overwrite"]) == 0
    assert json.loads(out_m.read_text())["generation"]["max_new_tokens"] == 6


def test_existing_training_run_of_another_config_is_refused(tmp_path, tiny_model_dir):
    from pspo.train import run_training

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"provenance": {"config_hash": "0123456789abcdef"}}))
    with pytest.raises(PSPOError, match=r"summary.json holds a run of a different configuration .*--overwrite"):
        run_training(model_dir=tiny_model_dir, train_file=tmp_path / "t.jsonl", val_file=None,
                     output_dir=tmp_path / "model", log_csv=tmp_path / "log.csv", summary_json=summary,
                     checkpoint_dir=tmp_path / "ckpt", objective="pspo", seed=0,
                     grpo_settings={"bf16": False, "use_cpu": True})
    assert not (tmp_path / "model").exists() and not (tmp_path / "log.csv").exists()


def test_a_failed_job_prints_its_log(tmp_path, data_dir):
    """The workflow profile (profiles/default/, read by Snakemake itself) shows a failed job's log: its one-line
    cause, not only Snakemake's "message: None"."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("gsm8k_train", "svamp", "asdiv", "math500"):
        os.symlink(data_dir / f"{name}.jsonl", data / f"{name}.jsonl")
    (data / "gsm8k_test.jsonl").write_text("not json\n")
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", str(results / "data" / "eval" / "gsm8k.jsonl"), "--cores", "1",
         "--configfile", "config/ci.yaml", "--config", f"results_dir={results}", f'data={{"dir": "{data}"}}'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Using workflow specific profile profiles/default" in out
    shown = out.split(f"Logfile {results}/logs/data/eval_gsm8k.log:", 1)
    assert len(shown) == 2, out
    assert f"error: {data}/gsm8k_test.jsonl:1: malformed JSON row" in shown[1]
