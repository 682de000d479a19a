"""GPU smoke test, for the day a GPU is at hand (skipped without CUDA): a tiny randomly initialised
Qwen2-architecture model (no hub) trains a few bf16 steps with every objective, then is evaluated with the backend
``auto`` picks (vLLM when installed); and the paper grid's own path, as ``pspo preflight`` runs it: TRL's colocated
vLLM training at top_p 0.9 with the weight sync checked, and a sampled (n = 2) evaluation launched from a script as
a workflow job (vLLM's engine is spawned on CUDA). On a GPU node: ``python -m pytest -m gpu -ra`` (README "Tests")."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def tiny_qwen2_dir(smollm2_dir, tmp_path_factory):
    """2 layers, head_dim 64 (vLLM's kernels want a standard head size), SmolLM2's tokenizer and chat template."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True, torch_dtype="bfloat16",
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("objective", ["clip", "noclip", "sigmoid", "pspo"])
def test_bf16_training_every_objective(tiny_qwen2_dir, tmp_path, objective):
    from datasets import Dataset

    from pspo.trainer import PSPOConfig, PSPOTrainer

    def length_reward(completions, **kwargs):
        return [len(c[0]["content"]) / 50.0 for c in completions]

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} + 3?"}]} for i in range(8)])
    mu = 1 if objective == "noclip" else 2
    args = PSPOConfig(
        output_dir=str(tmp_path / "out"), report_to=[], bf16=True, disable_tqdm=True, objective=objective,
        num_iterations=mu, per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        max_steps=2, logging_steps=1, learning_rate=1e-3, save_strategy="no", temperature=1.0, seed=0,
    )
    trainer = PSPOTrainer(model=str(tiny_qwen2_dir), reward_funcs=length_reward, args=args, train_dataset=data)
    assert trainer.model.device.type == "cuda"
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in trainer.model.named_parameters())
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert moved > 0 and len(rows) == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    if mu == 2:
        assert rows[1]["objective/ratio_std"] > 0


def test_evaluation_on_gpu(tiny_qwen2_dir, data_dir, tmp_path):
    from pspo.evaluation.backends import resolve_backend, vllm_installed
    from pspo.evaluation.runner import evaluate
    from pspo.io import read_jsonl, write_jsonl_atomic

    rows = tmp_path / "rows.jsonl"
    write_jsonl_atomic(rows, read_jsonl(data_dir / "gsm8k_test.jsonl")[:16])
    metrics = evaluate(model_dir=tiny_qwen2_dir, benchmark="gsm8k", data_file=rows,
                       out_samples=tmp_path / "s.jsonl", out_metrics=tmp_path / "m.json", max_new_tokens=16,
                       progress=False)
    generation = metrics["generation"]
    assert generation["device"] == "cuda" and generation["dtype"] in ("bfloat16", "float16")
    assert generation["backend"] == resolve_backend("auto") == ("vllm" if vllm_installed() else "transformers")
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 16


def test_paper_grid_path_as_preflight_runs_it(smollm2_dir):
    """config/config.yaml's settings through pspo.preflight on the GPU (vLLM parts only where vLLM is installed)."""
    from pspo import config as C
    from pspo import vllm_env
    from pspo.preflight import preflight

    settings = C.preflight_settings(C.load_config(C.SCHEMA_PATH.resolve().parents[2] / "config" / "config.yaml"))
    if not vllm_env.installed():
        settings["grpo"]["use_vllm"] = False
        settings["generation"]["backend"] = "transformers"
    report = preflight(tokenizer_dir=smollm2_dir, grpo=settings["grpo"], generation=settings["generation"],
                       require_gpu=True)
    assert report["status"] == "ready" and report["versions"]["cuda_available"]
    assert report["evaluation"]["device"] == "cuda" and report["evaluation"]["samples_per_prompt"] == 2
    assert set(report["evaluation"]["pass_at_k"]) == {"1", "2"}
    if vllm_env.installed():
        sync = report["training"]["sync"]
        assert report["training"]["generation"] == "vllm" and sync["gap_after_sync"] < 0.25 * sync["gap_stale"]
        assert report["evaluation"]["backend"] == "vllm"
