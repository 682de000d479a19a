"""The GPU memory a training job needs: parameter counts from safetensors headers, README's figures, the refusal."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from pspo import memory
from pspo.errors import PSPOError

REPO = Path(__file__).resolve().parents[1]


def test_parameter_count_reads_the_headers_as_the_model_counts(tiny_model_dir, smollm2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert memory.parameter_count(tiny_model_dir) == sum(p.numel() for p in model.parameters())
    assert memory.parameter_count(smollm2_dir) == 134_515_008  # SmolLM2-135M, tied head counted once


def test_vllm_share_is_the_settings_or_trls_default():
    assert memory.vllm_share({"use_vllm": False}) == 0.0
    assert memory.vllm_share({"use_vllm": True, "vllm_mode": "server"}) == 0.0
    assert memory.vllm_share({"use_vllm": True, "vllm_gpu_memory_utilization": 0.5}) == 0.5
    assert memory.vllm_share({"use_vllm": True}) == 0.3  # TRL 1.16's default


def test_readme_memory_figures_follow_from_the_parameter_counts():
    """README's per-model table: training state = 16 B/parameter; GPU >= that / (1 - vLLM's 0.3 share)."""
    rows = re.findall(r"^\| `([\w.-]+)` \| ([\d,]+) \| ([\d.]+) GiB \| ([\d.]+) GiB \|", (REPO / "README.md").read_text(),
                      flags=re.M)
    assert {r[0] for r in rows} == {"qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2-math-1.5b"}
    for _, count, training, gpu in rows:
        n = int(count.replace(",", ""))
        assert float(training) == round(memory.training_gib(n), 1)
        assert float(gpu) == round(memory.minimum_gpu_gib(n, 0.3), 1)


def test_a_gpu_too_small_is_one_line(tiny_model_dir):
    n = memory.parameter_count(tiny_model_dir)
    need = memory.minimum_gpu_gib(n, 0.3)
    memory.check_training_fits(tiny_model_dir, {"use_vllm": True}, model="tiny", gpu_name="G", gpu_gib=need * 1.01)
    with pytest.raises(PSPOError, match=r"^model tiny \(0\.\d\dB parameters\) needs .* beside vLLM's 30% share, so a "
                                        r"GPU of at least .* GiB; this G has .* GiB: ask SLURM for a larger one") as e:
        memory.check_training_fits(tiny_model_dir, {"use_vllm": True}, model="tiny", gpu_name="G",
                                   gpu_gib=need * 0.99)
    assert "\n" not in str(e.value)


def test_training_refuses_a_small_gpu_before_loading(smollm2_dir, tmp_path, monkeypatch):
    """run_training on a (simulated) 1 GiB GPU stops before the model is loaded and writes nothing."""
    import torch
    import transformers

    from pspo.train import run_training

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name="Tiny GPU", total_memory=2**30))
    loads = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a))
    out = tmp_path / "run"
    with pytest.raises(PSPOError, match=r"^model smollm2 \(0\.13B parameters\) needs 2\.0 GiB .* this Tiny GPU has "
                                        r"1\.0 GiB"):
        run_training(model_dir=smollm2_dir, train_file=tmp_path / "t.jsonl", val_file=None, output_dir=out / "model",
                     log_csv=out / "log.csv", summary_json=out / "summary.json", checkpoint_dir=out / "ckpt",
                     objective="pspo", alpha=0.1, seed=0, grpo_settings={"use_vllm": True},
                     provenance_extra={"model": "smollm2"})
    assert loads == [] and not out.exists()
