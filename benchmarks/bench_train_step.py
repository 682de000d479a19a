"""Cost of PSPOTrainer's loss vs TRL's own GRPOTrainer(loss_type="dapo"), on the packaged SmolLM2-135M-Instruct.

Measures one training micro-step where the two trainers differ: ``compute_loss`` (policy forward, per-token
surrogate, DAPO aggregation, metrics) + ``backward``, on the same batch (4 completions x 128 tokens, a GSM8K
prompt, old log-probs perturbed so that the ratio != 1 as on a reused pass) and the same weights. Generation and
the optimizer step are TRL's in both and are left out (they would only dilute the difference). Repeats are
interleaved (TRL, ours, TRL, ours, ...) and the median is reported.

    python benchmarks/bench_train_step.py [--repeats 7] [--threads 1] [--completion-length 128]
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


def main() -> None:
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
