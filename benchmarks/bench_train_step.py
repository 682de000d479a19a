"""Cost of PSPOTrainer's loss vs TRL's own GRPOTrainer(loss_type="dapo"), on the packaged SmolLM2-135M-Instruct.

Measures one training micro-step where the two trainers differ: ``compute_loss`` (policy forward, per-token
surrogate, DAPO aggregation, metrics) + ``backward``, on the same batch (4 completions x 128 tokens, a GSM8K
prompt, old log-probs perturbed so that the ratio != 1 as on a reused pass) and the same weights. Generation and
the optimizer step are TRL's in both and are left out (they would only dilute the difference). Repeats are
interleaved (TRL, ours, TRL, ours, ...) and the median is reported.

    python benchmarks/bench_train_step.py [--repeats 7] [--threads 1] [--completion-length 128]

``--breakdown`` instead times whole GRPO steps of the CPU grid (config/cpu.yaml's settings, the stand-in task) and
prints the share of generation, old log-probs, the policy forward, backward and the rest; then the throughput of the
ways a 2-core machine can run them, as ratios measured in one run: one job on 2 threads (fp32) vs two jobs on one
thread each (fp32, the CPU grid's choice) vs one job on 2 threads with bf16 autocast (offered only where the CPU
has AVX512-BF16 or AMX), with the reused pass's ratio spread beside each (bf16 log-prob rounding inflates it).

    python benchmarks/bench_train_step.py --breakdown [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def model_dir() -> Path:
    from pspo.models import PACKAGED_MODELS, convert_gguf, packaged_gguf_path

    cache = Path(os.environ.get("PSPO_CACHE", Path.home() / ".cache" / "pspo"))
    out = cache / "models" / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        convert_gguf(packaged_gguf_path(*PACKAGED_MODELS["smollm2-135m-instruct"]), out)
    return out


def make_batch(tokenizer, n: int, completion_length: int, seed: int = 0) -> dict:
    from pspo.prompts import build_messages

    question = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May?")
    prompt = tokenizer.apply_chat_template(build_messages(question), tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    g = torch.Generator().manual_seed(seed)
    completion_ids = torch.randint(0, len(tokenizer), (n, completion_length), generator=g)
    completion_mask = torch.ones(n, completion_length, dtype=torch.long)
    for i in range(n):  # varied lengths
        completion_mask[i, completion_length - i * completion_length // (2 * n):] = 0
    return {
        "prompt_ids": ids.repeat(n, 1), "prompt_mask": torch.ones(n, ids.shape[1], dtype=torch.long),
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": torch.randn(n, generator=g),
        "num_items_in_batch": completion_mask.sum(),
    }


# ------------------------------------------------------------------------------------------ whole-step breakdown
def breakdown_worker(steps: int, threads: int, bf16: bool, out_dir: str) -> dict:
    """One real CPU-grid training run of ``steps`` optimiser steps, every phase timed."""
    import collections
    import yaml

    torch.set_num_threads(threads)
    from datasets import Dataset

    from pspo import arith
    from pspo.prompts import build_messages
    from pspo.rewards import paper_reward
    from pspo.trainer import PSPOConfig, PSPOTrainer

    grpo = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "cpu.yaml").read_text())["training"]["grpo"]
    grpo.update(max_steps=steps, num_train_epochs=1, save_steps=10_000, bf16=bf16, use_cpu=True, report_to=[],
                disable_tqdm=True, output_dir=out_dir, num_iterations=2, objective="clip", seed=0)
    rows = arith.rows("arith_train")[:64]
    ds = Dataset.from_list([{"prompt": build_messages(r["question"]), "answer": r["answer"]} for r in rows])
    trainer = PSPOTrainer(model=str(model_dir()), reward_funcs=paper_reward, args=PSPOConfig(**grpo), train_dataset=ds)
    spent: dict[str, float] = collections.defaultdict(float)

    def timed(name_of, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name_of()] += time.perf_counter() - t0
        return wrapper

    trainer._generate = timed(lambda: "generation", trainer._generate)
    trainer._get_per_token_logps_and_entropies = timed(
        lambda: "policy forward" if torch.is_grad_enabled() else "old log-probs",
        trainer._get_per_token_logps_and_entropies)
    trainer.accelerator.backward = timed(lambda: "backward", trainer.accelerator.backward)
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    reused = [r["objective/ratio_std"] for r in trainer.state.log_history
              if "objective/ratio_std" in r and r["objective/ratio_std"] > 0]
    return {"total_s": total, "steps": trainer.state.global_step, "phases": dict(spent),
            "reused_ratio_std": statistics.mean(reused) if reused else 0.0}


def breakdown_main(steps: int) -> None:
    import json
    import subprocess
    import sys
    import tempfile

    from pspo.device import cpu_features, cpu_has_bf16_units

    features = cpu_features()
    bf16_ok = cpu_has_bf16_units()

    def run(threads: int, bf16: bool, copies: int) -> list[dict]:
        cmd = [sys.executable, __file__, "--worker", "--steps", str(steps), "--threads", str(threads)]
        cmd += ["--bf16"] if bf16 else []
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with tempfile.TemporaryDirectory() as tmp:
            procs = [subprocess.Popen(cmd + ["--out-dir", f"{tmp}/{i}"], stdout=subprocess.PIPE, text=True, env=env)
                     for i in range(copies)]
            outs = [p.communicate()[0] for p in procs]
        return [json.loads(o.strip().splitlines()[-1]) for o in outs]

    modes = [("one job, 2 threads, fp32", 2, False, 1), ("two jobs, 1 thread each, fp32", 1, False, 2)]
    if bf16_ok:
        modes.append(("one job, 2 threads, bf16 autocast", 2, True, 1))
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, flags {sorted(features) or 'unknown'}; "
          f"{steps} optimiser steps of config/cpu.yaml's GRPO settings (clip, mu = 2) per job")
    base_rate = None
    for label, threads, bf16, copies in modes:
        results = run(threads, bf16, copies)
        rate = sum(r["steps"] for r in results) / max(r["total_s"] for r in results)  # machine throughput
        base_rate = base_rate or rate
        r = results[0]
        shares = ", ".join(f"{k} {100 * v / r['total_s']:.0f}%" for k, v in sorted(r["phases"].items()))
        rest = 100 * (1 - sum(r["phases"].values()) / r["total_s"])
        print(f"{label:>36}: {rate * 60:.2f} steps/min on the machine, ratio {rate / base_rate:.2f}; "
              f"step {r['total_s'] / r['steps']:.1f} s = {shares}, other {rest:.0f}%; "
              f"reused-pass ratio std {r['reused_ratio_std']:.4f}")
    if not bf16_ok:
        print("bf16 not tried: this CPU has neither AVX512-BF16 nor AMX (bf16 would run slower than fp32)")


def main() -> None:
    import sys

    if "--breakdown" in sys.argv or "--worker" in sys.argv:
        import json

        p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        p.add_argument("--breakdown", action="store_true")
        p.add_argument("--worker", action="store_true")
        p.add_argument("--steps", type=int, default=4)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--bf16", action="store_true")
        p.add_argument("--out-dir", default="/tmp/pspo-bench-breakdown")
        a = p.parse_args()
        if a.worker:
            print(json.dumps(breakdown_worker(a.steps, a.threads, a.bf16, a.out_dir)))
        else:
            breakdown_main(a.steps)
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=int(os.environ.get("PSPO_TORCH_THREADS", "1")))
    p.add_argument("--completion-length", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--objectives", default="clip,pspo")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from pspo.trainer import PSPOConfig, PSPOTrainer

    path = model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    batch = make_batch(tok, a.batch, a.completion_length)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": "1+1?"}]}] * 8)

    def reward(completions, **kw):
        return [0.0] * len(completions)

    common = dict(output_dir="/tmp/pspo-bench", report_to=[], bf16=False, use_cpu=True, disable_tqdm=True,
                  gradient_checkpointing=False, per_device_train_batch_size=a.batch, num_generations=a.batch,
                  gradient_accumulation_steps=1, num_iterations=2, seed=0)
    trainers = {"trl-dapo": GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=reward,
                                        args=GRPOConfig(**common, loss_type="dapo", epsilon=0.2), train_dataset=ds)}
    for obj in a.objectives.split(","):
        trainers[f"pspo-{obj}"] = PSPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=reward,
                                              args=PSPOConfig(**common, objective=obj), train_dataset=ds)
    # old log-probs: the model's own, perturbed (a reused pass), computed once and shared
    t = trainers["trl-dapo"]
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        old, _, _ = t._get_per_token_logps_and_entropies(t.model, ids, mask, batch["completion_ids"].shape[1])
    batch["old_per_token_logps"] = old + 0.2 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1))

    def step(trainer) -> tuple[float, float]:
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        t0 = time.perf_counter()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        dt = time.perf_counter() - t0
        trainer.model.zero_grad(set_to_none=True)
        trainer._metrics["train"].clear()
        return dt, loss.item()

    for tr in trainers.values():  # warm-up
        step(tr)
    times = {k: [] for k in trainers}
    losses = {}
    for _ in range(a.repeats):
        for name, tr in trainers.items():
            dt, losses[name] = step(tr)
            times[name].append(dt)

    print(f"SmolLM2-135M-Instruct, batch {a.batch} x {a.completion_length} completion tokens, "
          f"torch threads {a.threads}, {a.repeats} interleaved repeats (compute_loss + backward)")
    base = statistics.median(times["trl-dapo"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:>12}: median {med:.3f} s  (min {min(ts):.3f}, max {max(ts):.3f})  loss {losses[name]:+.6f}  "
              f"ratio to trl-dapo {med / base:.3f}")
    print(f"clip loss equal to TRL's: {abs(losses.get('pspo-clip', losses['trl-dapo']) - losses['trl-dapo']) < 1e-6}")


if __name__ == "__main__":
    main()
