"""The training driver (pspo.train): exact resume after a crash (in-process and kill -9), determinism, NaN stop,
the GPU guard, settings checks and the CSV log."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pspo.errors import PSPOError
from pspo.io import read_jsonl, write_jsonl_atomic
from pspo.checkpoints import latest_checkpoint
from pspo.cli import run as pspo
from pspo.device import GPU_MESSAGE
from pspo.train import run_training
from pspo.train_log import CSV_COLUMNS

N_STEPS = 5
# mu = 2, one micro-batch per step: steps 1, 3, 5 generate; 2 and 4 reuse. A checkpoint every step, the last 2 kept.
SETTINGS = dict(
    learning_rate=2e-2, num_iterations=2, per_device_train_batch_size=4, gradient_accumulation_steps=1,
    num_generations=4, max_completion_length=4, max_steps=N_STEPS, save_steps=1, logging_steps=1, bf16=False,
    gradient_checkpointing=False, temperature=1.0, warmup_steps=1, lr_scheduler_type="linear", use_cpu=True,
)
TIMING = {"step_time"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def length_reward(completions, **kwargs):
    return [len(c[0]["content"]) / 50.0 for c in completions]


@pytest.fixture(scope="module")
def train_file(data_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = read_jsonl(data_dir / "gsm8k_train.jsonl")[:12]
    write_jsonl_atomic(path, [{k: r[k] for k in ("id", "question", "answer")} for r in rows])
    return path


def _kw(root: Path, tiny_model_dir, train_file, **over):
    kw = dict(
        model_dir=tiny_model_dir, train_file=train_file, val_file=None, output_dir=root / "model",
        log_csv=root / "log.csv", summary_json=root / "summary.json", checkpoint_dir=root / "checkpoints",
        objective="pspo", seed=0, grpo_settings=dict(SETTINGS), reward=length_reward, system_prompt="Be brief.",
    )
    kw.update(over)
    return kw


def _csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _params(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


class _Crash(Exception):
    pass


def _crash_on_log_at(step: int):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        # on_log runs after the CSV callback wrote the row and *before* the step's checkpoint is saved
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == step:
                raise _Crash(f"simulated crash after logging step {step}")

    return Crash()


@pytest.fixture(scope="module")
def runs(tiny_model_dir, train_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # keeps its checkpoints (the schema's default deletes them): a later test resumes from a copy of them
    ref = _kw(root / "ref", tiny_model_dir, train_file, keep_checkpoints_after_training=True)
    ref_summary = run_training(**ref)
    crashed = _kw(root / "crashed", tiny_model_dir, train_file)
    with pytest.raises(_Crash):
        run_training(**crashed, callbacks=[_crash_on_log_at(4)])
    at_crash = {
        "csv": _csv(crashed["log_csv"]),
        "checkpoints": sorted(p.name for p in Path(crashed["checkpoint_dir"]).glob("checkpoint-*")),
        "model_exists": Path(crashed["output_dir"]).exists(),
        "summary_exists": Path(crashed["summary_json"]).exists(),
    }
    resumed_summary = run_training(**crashed)
    return dict(ref=ref, ref_summary=ref_summary, crashed=crashed, at_crash=at_crash, resumed_summary=resumed_summary)


def test_reference_run_outputs(runs):
    ref, summary = runs["ref"], runs["ref_summary"]
    from pspo.models import check_model_dir

    check_model_dir(ref["output_dir"])
    assert (Path(ref["output_dir"]) / "tokenizer.json").is_file()
    rows = _csv(ref["log_csv"])
    assert [int(r["step"]) for r in rows] == list(range(1, N_STEPS + 1))
    header = list(rows[0].keys())
    assert header[: len(CSV_COLUMNS)] == list(CSV_COLUMNS)
    for r in rows:
        for c in ("loss", "learning_rate", "grad_norm", "objective/ratio_mean", "objective/ratio_std",
                  "objective/ratio_min", "objective/ratio_max", "objective/smoothed_ratio_mean", "entropy"):
            assert r[c] != "", (r["step"], c)
    for r in rows[0::2]:  # generation steps carry the reward and completion statistics
        assert r["reward"] != "" and r["reward_std"] != "" and r["completions/mean_length"] != ""
    assert float(rows[3]["objective/ratio_std"]) > 0  # step 4 reuses step 3's generations after an update
    assert rows[0]["objective/clip_fraction"] == ""  # the clip column exists but is empty for pspo
    saved = json.loads(Path(ref["summary_json"]).read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["steps"] == N_STEPS and saved["resumed_from"] is None and saved["objective"] == "pspo"
    assert saved["alpha"] == 0.1 and saved["checkpoint_disk_bytes"] > 0 and saved["wall_time_s"] > 0
    assert saved["checkpoints"] == ["checkpoint-4", "checkpoint-5"]  # keep_checkpoints=2
    signal = saved["learning_signal"]  # the length reward varies within groups: the run learned
    assert saved["trained"] is True and signal["steps"] == N_STEPS and signal["generation_steps"] == 3
    prov = saved["provenance"]
    assert prov["versions"]["trl"] == "1.16.0" and "train.jsonl" in prov["data_sha256"]


def test_crash_keeps_checkpoints_and_partial_log(runs):
    at = runs["at_crash"]
    assert [int(r["step"]) for r in at["csv"]] == [1, 2, 3, 4]  # step 4 logged, its checkpoint never written
    assert at["checkpoints"] == ["checkpoint-2", "checkpoint-3"]
    assert not at["model_exists"] and not at["summary_exists"]


def test_resume_equals_uninterrupted(runs):
    ref, crashed = runs["ref"], runs["crashed"]
    summary = runs["resumed_summary"]
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["resumed_at_step"] == 3
    # checkpoint-3 lies between the two passes over step 3's generations: the reuse buffer was restored
    assert _strip(_csv(crashed["log_csv"])) == _strip(_csv(ref["log_csv"]))
    _assert_same_params(crashed["output_dir"], ref["output_dir"])


def test_determinism_same_seed_same_log(runs):
    """Two independent runs with the same config and seed (the reference and the crashed one, up to the crash)."""
    ref_rows = _strip(_csv(runs["ref"]["log_csv"]))
    assert _strip(runs["at_crash"]["csv"]) == ref_rows[:4]


def test_kill9_subprocess_resume(runs, tiny_model_dir, train_file, tmp_path):
    """A real `kill -9` during training (at any point after step 4 was logged), then a rerun that resumes."""
    root = tmp_path / "k9"
    kw = _kw(root, tiny_model_dir, train_file)
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from pspo.train import run_training
        def length_reward(completions, **kwargs):
            return [len(c[0]["content"]) / 50.0 for c in completions]
        kw = {{k: v for k, v in {dict((k, str(v) if isinstance(v, Path) else v) for k, v in kw.items()
                                      if k != "reward")!r}.items()}}
        run_training(**kw, reward=length_reward)
    """))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if Path(kw["log_csv"]).is_file() and len(_csv(kw["log_csv"])) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert not Path(kw["summary_json"]).exists()
    assert latest_checkpoint(kw["checkpoint_dir"]) is not None
    rerun = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stderr
    summary = json.loads(Path(kw["summary_json"]).read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == N_STEPS
    assert _strip(_csv(kw["log_csv"])) == _strip(_csv(runs["ref"]["log_csv"]))
    _assert_same_params(kw["output_dir"], runs["ref"]["output_dir"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model_dir, train_file, tmp_path):
    """Weights turned NaN before step 4 (a reuse step, no generation): the loss is NaN, training stops with a
    one-line PSPOError before the optimizer step, and the last good checkpoint stays the newest."""
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    model.model.norm.weight.fill_(float("nan"))

    settings = dict(SETTINGS, save_steps=2, max_steps=N_STEPS)
    kw = _kw(tmp_path, tiny_model_dir, train_file, grpo_settings=settings)
    with pytest.raises(PSPOError, match=r"^non-finite loss \(nan\) at step 4 \(objective pspo\); training stopped") as e:
        run_training(**kw, callbacks=[Poison()])
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in Path(kw["checkpoint_dir"]).glob("checkpoint-*")) == ["checkpoint-2"]
    assert [r["step"] for r in _csv(kw["log_csv"])] == ["1", "2", "3"]
    assert not Path(kw["output_dir"]).exists() and not Path(kw["summary_json"]).exists()
    weights = _params(Path(kw["checkpoint_dir"]) / "checkpoint-2")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_inf_reward_does_not_poison_training(tiny_model_dir, train_file, tmp_path):
    """For the record: TRL turns an infinite reward into zero advantages (loss 0), so it is not a NaN source."""
    def inf_reward(completions, **kwargs):
        return [float("inf")] * len(completions)

    settings = dict(SETTINGS, max_steps=1, save_steps=10)
    summary = run_training(**_kw(tmp_path, tiny_model_dir, train_file, reward=inf_reward, grpo_settings=settings))
    assert summary["steps"] == 1 and float(_csv(tmp_path / "log.csv")[0]["loss"]) == 0.0


def test_require_gpu_without_cuda(tiny_model_dir, train_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kw = _kw(tmp_path, tiny_model_dir, train_file, require_gpu=True, provenance_extra={"model": "qwen2.5-1.5b"})
    with pytest.raises(PSPOError) as e:
        run_training(**kw)
    assert str(e.value) == GPU_MESSAGE.format(model="qwen2.5-1.5b")
    assert str(e.value).startswith("this is a GPU-sized job (model qwen2.5-1.5b); no GPU here: use config/cpu.yaml")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("settings, match", [
    (dict(SETTINGS, objective="clip"), r"grpo_settings\['objective'\]='clip' contradicts the objective argument"),
    (dict(SETTINGS, seed=3), r"grpo_settings\['seed'\]=3 contradicts"),
    (dict(SETTINGS, output_dir="/x"), "grpo_settings may not set output_dir"),
    (dict(SETTINGS, not_a_field=1), "grpo_settings: .*not_a_field"),
    (dict(SETTINGS, epsilon=0.3), "grpo_settings: epsilon=0.3 applies to objective='clip' only"),
])
def test_bad_settings(tiny_model_dir, train_file, tmp_path, settings, match):
    with pytest.raises(PSPOError, match=match) as e:
        run_training(**_kw(tmp_path, tiny_model_dir, train_file, grpo_settings=settings))
    assert "\n" not in str(e.value)


def test_settings_matching_arguments_are_accepted_and_alpha_recorded(tiny_model_dir, train_file, tmp_path):
    settings = dict(SETTINGS, objective="pspo", seed=0, smoothing_alpha=0.2, max_steps=1, save_steps=1)
    summary = run_training(**_kw(tmp_path, tiny_model_dir, train_file, grpo_settings=settings, alpha=0.2))
    assert summary["alpha"] == 0.2 and summary["steps"] == 1


def test_checkpoints_of_another_config_are_moved_aside_not_resumed(runs, tiny_model_dir, train_file, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(runs["ref"]["checkpoint_dir"], ckpt)
    before = sorted(p.name for p in ckpt.iterdir())
    summary = run_training(**_kw(tmp_path, tiny_model_dir, train_file, checkpoint_dir=ckpt, seed=1))
    assert summary["resumed_from"] is None
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("ckpt.stale-")]
    assert len(stale) == 1 and sorted(p.name for p in stale[0].iterdir()) == before


def test_checkpoints_removed_after_training_when_asked(tiny_model_dir, train_file, tmp_path):
    kw = _kw(tmp_path, tiny_model_dir, train_file, grpo_settings=dict(SETTINGS, max_steps=1, save_steps=1))
    summary = run_training(**kw, keep_checkpoints_after_training=False)
    assert summary["checkpoint_disk_bytes"] > 0 and summary["checkpoints_removed_after_training"]
    assert not Path(summary["checkpoint_dir"]).exists() and Path(kw["output_dir"], "config.json").is_file()


def test_cli(tiny_model_dir, train_file, tmp_path, capsys):
    from pspo.cli import main as cli_main

    settings = tmp_path / "s.json"
    settings.write_text(json.dumps(SETTINGS))
    argv = ["train", "--model-dir", str(tiny_model_dir), "--train-file", str(train_file), "--output-dir",
            str(tmp_path / "m"), "--log-csv", str(tmp_path / "l.csv"), "--summary-json", str(tmp_path / "s.json"),
            "--checkpoint-dir", str(tmp_path / "c"), "--objective", "clip", "--grpo-settings", f"@{settings}",
            "--require-gpu"]
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pspo train: error: this is a GPU-sized job") and "\n" not in err
    assert cli_main(argv[:-2] + ["{not json"]) == 2
    assert "--grpo-settings: malformed JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pspo(["train", "--objective", "ppo"])
