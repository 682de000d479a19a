"""How much GRPO signal a model gets from a training set: sample groups of completions like training does and count.

For each training set (GSM8K train, the CPU stand-in task) it samples ``--group`` completions for ``--prompts``
prompts at the training temperature and top-p, grades them with the paper's reward, and prints the correct, formatted
and truncated shares, the mean length, and the share of groups with reward spread (only those give GRPO a
gradient). This is the measurement behind config/cpu.yaml's choice of the stand-in task and completion length.

    python benchmarks/bench_reward_signal.py [--prompts 32] [--max-new-tokens 64 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def rows_of(train_set: str, n: int) -> list[dict]:
    from pspo import data
    from pspo.benchmarks import TRAIN_SETS

    pool = data.load_benchmark(TRAIN_SETS[train_set])  # the stand-in is generated; GSM8K from shared/data
    train, _ = data.split_train_val(pool, seed=0, train_size=len(pool) - 1)
    return train[:n]


def measure(model, tok, rows: list[dict], group: int, max_new_tokens: int, batch: int = 8) -> dict:
    from pspo.grading import is_formatted
    from pspo.prompts import render_prompt
    from pspo.rewards import score_completion

    torch.manual_seed(0)
    results, t0 = [], time.perf_counter()
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        enc = tok([render_prompt(tok, r["question"]) for r in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=max_new_tokens,
                                 num_return_sequences=group, pad_token_id=tok.pad_token_id)
        for j, ids in enumerate(out[:, enc["input_ids"].shape[1]:]):
            text = tok.decode(ids, skip_special_tokens=True)
            length = int((ids != tok.pad_token_id).sum())
            results.append((chunk[j // group], score_completion(text, chunk[j // group]["answer"]),
                            is_formatted(text), length >= max_new_tokens, length))
    groups = [results[k:k + group] for k in range(0, len(results), group)]
    n = len(results)
    return {"correct": sum(r[1] >= 1 for r in results) / n, "formatted": sum(r[2] for r in results) / n,
            "truncated": sum(r[3] for r in results) / n, "mean_tokens": sum(r[4] for r in results) / n,
            "groups_with_spread": sum(len({r[1] for r in g}) > 1 for g in groups) / len(groups),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, nargs="+", default=[64, 256])
    p.add_argument("--sets", nargs="+", default=["arith", "gsm8k"])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench_train_step import model_dir

    tok = AutoTokenizer.from_pretrained(model_dir())
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=torch.float32).eval()
    print(f"SmolLM2-135M-Instruct, {a.prompts} prompts x {a.group} completions, T=0.8, top-p 0.9, paper reward")
    for train_set in a.sets:
        rows = rows_of(train_set, a.prompts)
        for m in a.max_new_tokens:
            r = measure(model, tok, rows, a.group, m)
            print(json.dumps({"train_set": train_set, "max_new_tokens": m, **{k: round(v, 3) for k, v in r.items()}}))


if __name__ == "__main__":
    main()
