"""``pspo preflight``: the GPU path checked in minutes, before a queue of training and evaluation jobs.

It reports the driver, CUDA, torch, transformers, TRL and vLLM versions, then runs the grid's own code path on a
tiny randomly initialised Qwen2-architecture model (the grid's tokenizer, no hub): two training steps generated the
way the grid generates (TRL's colocated vLLM, or transformers), with the weight sync into vLLM checked (after a
perturbation of the policy, vLLM's log-probs of a fixed sequence must follow it), and one evaluation launched from
a script file the way a workflow job runs (so a ``spawn``-started vLLM engine cannot re-run it). It ends with one
line: ``ready`` or the problem. On a CPU grid it runs the same checks on the CPU (vLLM's CPU build where the grid
uses vLLM). The ``preflight`` rule runs it once per grid; every training and evaluation job waits for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from pspo.errors import PSPOError
from pspo.io import write_json_atomic
from pspo.vllm_env import RENDEZVOUS_VARIABLES, rendezvous_scope, shutdown_colocated

SYNC_TOLERANCE = 0.25  # after the sync, vLLM's log-prob error must shrink to this share of the stale one
TRAIN_STEPS = 2


def versions() -> dict[str, Any]:
    import torch
    import transformers
    import trl

    from pspo import vllm_env
    from pspo.device import visible_nvidia_gpus

    seen = visible_nvidia_gpus()
    return {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "gpus": seen[0] if seen else [],
            "driver": seen[1] if seen else None, "transformers": transformers.__version__, "trl": trl.__version__,
            "vllm": vllm_env.version_string()}


def tiny_model(tokenizer_dir: str | Path, out: Path, dtype: str) -> Path:
    """A 2-layer random Qwen2 (head_dim 64, as vLLM's kernels want) with the tokenizer of ``tokenizer_dir``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True, torch_dtype=dtype,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    Qwen2ForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _logprobs_gap(trainer) -> float:
    """max |vLLM log-prob - policy log-prob| over a fixed sequence (the policy in float32)."""
    import torch
    from vllm import SamplingParams

    ids = trainer.processing_class("Preflight: 1 2 3 4 5 6 7 8 9 10 and the quick brown fox.")["input_ids"]
    out = trainer.vllm_generation.llm.generate(
        [{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0), use_tqdm=False)
    theirs = torch.tensor([out[0].prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))])
    with torch.no_grad():
        logits = trainer.model(torch.tensor([ids], device=trainer.model.device)).logits[0, :-1].float()
    ours = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:], device=logits.device)[:, None])[:, 0].cpu()
    return float((theirs - ours).abs().max())


def check_training(model_dir: Path, grpo: dict[str, Any], work: Path) -> dict[str, Any]:
    """Two optimiser steps with the grid's generation settings; with colocated vLLM, the weight sync checked."""
    import torch
    from datasets import Dataset

    from pspo.trainer import PSPOConfig, PSPOTrainer

    keep = ("use_vllm", "vllm_mode", "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
            "vllm_gpu_memory_utilization", "vllm_dtype", "temperature", "top_p", "bf16", "beta")
    settings = {k: grpo[k] for k in keep if k in grpo}
    on_gpu = torch.cuda.is_available()
    settings.update(
        output_dir=str(work / "train"), report_to=[], disable_tqdm=True, objective="pspo", smoothing_alpha=0.1,
        num_iterations=1, per_device_train_batch_size=4, num_generations=4, gradient_accumulation_steps=1,
        max_completion_length=8, max_steps=TRAIN_STEPS, logging_steps=1, learning_rate=1e-3, save_strategy="no",
        seed=0, gradient_checkpointing=False, use_cpu=not on_gpu, vllm_max_model_length=512,
        vllm_enable_sleep_mode=False, bf16=bool(settings.get("bf16")) and on_gpu,
    )

    def length_reward(completions, **kwargs):
        return [len(c[0]["content"]) / 20.0 for c in completions]

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} + 3?"}]} for i in range(8)])
    t0 = time.perf_counter()
    trainer = PSPOTrainer(model=str(model_dir), reward_funcs=length_reward, args=PSPOConfig(**settings),
                          train_dataset=data)
    try:
        trainer.train()
        rows = [r for r in trainer.state.log_history if "loss" in r]
        if len(rows) != TRAIN_STEPS or not all(torch.isfinite(torch.tensor(r["loss"])) for r in rows):
            raise PSPOError(f"preflight: training ran {len(rows)} of {TRAIN_STEPS} steps or logged a non-finite loss")
        result: dict[str, Any] = {"steps": len(rows), "seconds": round(time.perf_counter() - t0, 1),
                                  "generation": "vllm" if settings.get("use_vllm") else "transformers"}
        if settings.get("use_vllm") and settings.get("vllm_mode", "colocate") == "colocate":
            if trainer._last_loaded_step != TRAIN_STEPS - 1:
                raise PSPOError("preflight: TRL did not sync the weights into vLLM before the second generation")
            trainer.vllm_generation.sync_weights()
            synced = _logprobs_gap(trainer)
            with torch.no_grad():
                weight = trainer.model.get_input_embeddings().weight  # tied: also the LM head
                weight.add_(torch.randn_like(weight), alpha=0.5)
            stale = _logprobs_gap(trainer)
            trainer.vllm_generation.sync_weights()
            after = _logprobs_gap(trainer)
            result["sync"] = {"gap_synced": synced, "gap_stale": stale, "gap_after_sync": after}
            if not stale > 0 or after > SYNC_TOLERANCE * stale:
                raise PSPOError(f"preflight: after the weight sync vLLM's log-probs do not follow the policy (gap "
                                f"{after:.3g} vs {stale:.3g} stale): TRL's sync does not reach vLLM's weights")
    finally:
        shutdown_colocated(trainer)
    return result


EVAL_SCRIPT = """
import json, sys
from types import SimpleNamespace

from pspo.evaluation import evaluate
from pspo.workflow import run_job

args = json.loads(sys.argv[1])
job = SimpleNamespace(threads=args.pop("threads"), log=[])
run_job(job, lambda: evaluate(**args))
"""


def check_evaluation(model_dir: Path, generation: dict[str, Any], work: Path, threads: int | None) -> dict[str, Any]:
    """One sampled evaluation (n = 2) with the grid's backend on four stand-in problems, from a script file run as
    ``__main__`` (as a workflow job runs)."""
    from pspo import arith
    from pspo.io import write_jsonl_atomic

    data_file = work / "rows.jsonl"
    write_jsonl_atomic(data_file, [arith.problem("arith", i) for i in range(4)])
    script = work / "evaluate_job.py"
    script.write_text(textwrap.dedent(EVAL_SCRIPT))
    args = {"model_dir": str(model_dir), "benchmark": "arith", "data_file": str(data_file),
            "out_samples": str(work / "eval.samples.jsonl"), "out_metrics": str(work / "eval.metrics.json"),
            "temperature": 0.6, "n_samples": 2, "top_p": 1.0, "max_new_tokens": 8, "backend": generation["backend"],
            "dtype": generation["dtype"], "progress": False, "threads": threads}
    # A job's environment: not the rendezvous variables TRL's colocated engine set in this process (whose store
    # still holds MASTER_PORT: a vLLM engine inheriting it fails with EADDRINUSE).
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")] if p)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), json.dumps(args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise PSPOError(f"preflight: the evaluation job failed ({generation['backend']} backend): {tail[0]}")
    metrics = json.loads((work / "eval.metrics.json").read_text())
    return {"backend": metrics["generation"]["backend"], "device": metrics["generation"]["device"],
            "dtype": metrics["generation"]["dtype"], "n_prompts": metrics["n_prompts"],
            "samples_per_prompt": metrics["samples_per_prompt"], "pass_at_k": metrics["pass_at_k"],
            "seconds": round(time.perf_counter() - t0, 1)}


def preflight(*, tokenizer_dir: str | Path, grpo: dict[str, Any], generation: dict[str, Any],
              out: str | Path | None = None, require_gpu: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Run every check; write the report to ``out`` (JSON) and return it. Raises PSPOError with the one problem."""
    import torch

    from pspo.device import ensure_gpu, torch_threads
    from pspo.evaluation.backends import resolve_backend, resolve_dtype

    report: dict[str, Any] = {"versions": versions()}
    if require_gpu:
        ensure_gpu("preflight")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generation = {**generation, "backend": resolve_backend(generation.get("backend", "auto"))}
    dtype = resolve_dtype(generation.get("dtype", "auto"), device)
    with tempfile.TemporaryDirectory(prefix="pspo-preflight-") as tmp, torch_threads(threads), rendezvous_scope():
        work = Path(tmp)
        model = tiny_model(tokenizer_dir, work / "model", "bfloat16" if device == "cuda" else "float32")
        report["training"] = check_training(model, grpo, work)
        report["evaluation"] = check_evaluation(model, {**generation, "dtype": dtype}, work, threads)
    report["status"] = "ready"
    if out is not None:
        write_json_atomic(out, report)
    return report


__all__ = ["preflight", "versions", "tiny_model", "check_training", "check_evaluation"]
