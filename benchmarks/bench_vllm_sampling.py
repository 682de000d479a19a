"""TRL's vLLM importance-sampling weight under the paper grid's sampling settings, on vLLM's CPU build.

Trains GR-PSPO with TRL's colocated vLLM on the packaged SmolLM2-135M-Instruct with ``config/config.yaml``'s
``training.grpo`` (sizes shrunk: 4 GSM8K prompts x 4 completions of 48 tokens per generation, float32 training,
no validation), once per setting, each in its own process, and prints TRL's per-step
``sampling/importance_sampling_ratio/{mean,min,max}`` and ``sampling/sampling_logp_difference/{mean,max}``:

* TRL's correction on (its default), top_p 0.9 (the paper grid) and 1.0, with vLLM in float32 (``vllm_dtype:
  auto`` = the training precision) and in bfloat16 (what vLLM's own ``auto`` picks for a float32 checkpoint,
  TRL's behaviour before ``PSPOConfig.vllm_dtype``);
* the paper grid as configured (correction off): TRL applies no weight and logs none, which the script checks.

    python benchmarks/bench_vllm_sampling.py [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [  # (top_p, vllm_dtype, correction)
    (0.9, "float32", True), (1.0, "float32", True), (0.9, "bfloat16", True), (1.0, "bfloat16", True),
    (0.9, "float32", False),
]
METRICS = ["sampling/importance_sampling_ratio/mean", "sampling/importance_sampling_ratio/min",
           "sampling/importance_sampling_ratio/max", "sampling/sampling_logp_difference/mean",
           "sampling/sampling_logp_difference/max"]
DROP = ("eval_strategy", "eval_steps", "per_device_eval_batch_size", "load_best_model_at_end",
        "metric_for_best_model", "greater_is_better", "save_steps", "num_train_epochs", "warmup_steps")


def one_run(top_p: float, dtype: str, correction: bool, steps: int, out: str) -> list[dict]:
    import yaml
    from datasets import Dataset

    from pspo.io import read_jsonl
    from pspo.prompts import build_messages
    from pspo.trainer import PSPOConfig, PSPOTrainer
    from bench_train_step import model_dir

    paper = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    grpo = {k: v for k, v in paper["training"]["grpo"].items() if k not in DROP}
    grpo.update(paper["runs"]["pspo"]["grpo"])
    grpo.update(per_device_train_batch_size=16, gradient_accumulation_steps=1, max_completion_length=48,
                bf16=False, use_cpu=True, max_steps=steps, top_p=top_p, vllm_dtype=dtype,
                vllm_importance_sampling_correction=correction, vllm_max_model_length=1024,
                vllm_enable_sleep_mode=False, report_to=[], disable_tqdm=True, save_strategy="no", seed=0,
                output_dir=out, objective="pspo", smoothing_alpha=0.1)
    data_dir = Path(os.environ.get("PSPO_DATA_DIR", REPO.parent / "shared" / "data"))
    rows = read_jsonl(data_dir / "gsm8k_train.jsonl")[:64]
    data = Dataset.from_list([{"prompt": build_messages(r["question"])} for r in rows])

    def length_reward(completions, **kwargs):
        return [len(c[0]["content"]) / 100.0 for c in completions]

    trainer = PSPOTrainer(model=str(model_dir()), reward_funcs=length_reward, args=PSPOConfig(**grpo),
                          train_dataset=data)
    trainer.train()
    return [{k: r.get(k) for k in ["step", *METRICS]} for r in trainer.state.log_history if "loss" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="optimiser steps per setting (mu = 2: a generation every 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting, print its rows as JSON
    args = ap.parse_args()
    if args.one:
        top_p, dtype, correction = json.loads(args.one)
        print("ROWS " + json.dumps(one_run(top_p, dtype, correction, args.steps, f"/tmp/bench_vllm_sampling_{os.getpid()}")))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    print("| top_p | vLLM dtype | TRL correction | step | IS ratio mean [min, max] | logp difference mean / max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for top_p, dtype, correction in SETTINGS:
        proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one",
                               json.dumps([top_p, dtype, correction])], capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
        if proc.returncode != 0 or not lines:
            print(f"| {top_p} | {dtype} | {correction} | failed: {proc.stderr.strip().splitlines()[-1:]} | | |")
            continue
        for row in json.loads(lines[0][5:]):
            ratio = row[METRICS[0]]
            if ratio is None:
                cells = "no weight applied or logged" if not correction else "missing"
                print(f"| {top_p} | {dtype} | {correction} | {row['step']} | {cells} | |")
                continue
            print(f"| {top_p} | {dtype} | {correction} | {row['step']} | {ratio:.3f} [{row[METRICS[1]]:.3f}, "
                  f"{row[METRICS[2]]:.3f}] | {row[METRICS[3]]:.4f} / {row[METRICS[4]]:.3f} |")


if __name__ == "__main__":
    main()
