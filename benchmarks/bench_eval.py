"""Benchmark: pspo.evaluation vs naive batch-1 transformers ``generate`` on SmolLM2-135M-Instruct, same run.

    python benchmarks/bench_eval.py                       # 64 GSM8K test prompts x 128 new tokens; naive on 8
    python benchmarks/bench_eval.py --threads 1           # e.g. on a machine shared with other jobs
    python benchmarks/bench_eval.py --dtype-study 128     # also: how often bf16 and fp32 greedy completions differ
    python benchmarks/bench_eval.py --attention           # also: the loop's grouped decode attention vs sdpa
    python benchmarks/bench_eval.py --vllm --skip-naive   # also: vLLM (its CPU build here) vs our loop, fp32 and
                                                          # bf16, load time apart, same prompts, ratios in one run

Every run first measures the limits in the same process: the machine's fp32 and bf16 matmul rate (square 2048^3 and
decode-shaped: batch x hidden . hidden x intermediate), the compute bound they give (tok/s = decode-shaped rate /
2 FLOP per parameter per token), and the model's raw batched decode step (one forward of the batch over a KV cache
of the prompts' mean length while decoding, no loop around it). Each result is printed as a share of both.

Tokens are completion tokens up to and including the first EOS (nothing generated after EOS is counted), for both
paths. Throughput is completion tokens / generation wall time (prefill included, model loading excluded); the
end-to-end time of ``evaluate`` (loading, grading, writing) is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PSPO_DATA_DIR", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("PSPO_CACHE", Path.home() / ".cache" / "pspo"))


def model_dir() -> Path:
    from pspo.models import PACKAGED_MODELS, convert_gguf, packaged_gguf_path

    out = CACHE / "models" / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        convert_gguf(packaged_gguf_path(*PACKAGED_MODELS["smollm2-135m-instruct"]), out)
    return out


def naive_generate(mdir: Path, questions: list[str], max_new_tokens: int) -> tuple[int, float]:
    """Batch-1 fp32 ``model.generate`` (greedy); returns (completion tokens up to and including EOS, seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pspo.prompts import render_prompt

    tok = AutoTokenizer.from_pretrained(mdir)
    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval()
    eos = tok.eos_token_id
    tokens, seconds = 0, 0.0
    for q in questions:
        ids = torch.tensor([tok(render_prompt(tok, q), add_special_tokens=False)["input_ids"]])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=eos)
        seconds += time.perf_counter() - t0
        gen = out[0, ids.shape[1]:].tolist()
        tokens += gen.index(eos) + 1 if eos in gen else len(gen)
    return tokens, seconds


def matmul_rate(dtype, m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """GFLOP/s of an (m x k) @ (k x n) matmul in ``dtype`` at torch's current threads (best of repeated timings)."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    best, spent = float("inf"), 0.0
    while spent < seconds:
        reps = max(1, int(2e8 / (m * k * n)))
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        dt = (time.perf_counter() - t0) / reps
        best, spent = min(best, dt), spent + dt * reps
    return 2 * m * k * n / best / 1e9


def raw_decode_step(mdir: Path, dtype: str, batch: int, context: int, steps: int = 8) -> float:
    """tok/s of the model's forward alone: ``batch`` rows, one new token each over a ``context``-token KV cache
    (transformers, sdpa), best of ``steps`` steps; what a loop around it can at most reach."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=getattr(torch, dtype)).eval()
    ids = torch.randint(100, 1000, (batch, context))
    best = float("inf")
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = ids[:, -1:]
        for i in range(steps):
            pos = torch.full((batch, 1), context + i)
            t0 = time.perf_counter()
            model(input_ids=token, position_ids=pos, past_key_values=cache, use_cache=True)
            best = min(best, time.perf_counter() - t0)
    return batch / best


def limits(mdir: Path, batch: int, context: int) -> dict:
    """The machine's matmul rates and the model's compute bound and raw decode step, fp32 and bf16."""
    import torch
    from transformers import AutoConfig

    from pspo.device import cpu_has_bf16_units
    from pspo.memory import parameter_count

    config = AutoConfig.from_pretrained(mdir)
    flop_per_token = 2 * parameter_count(mdir)  # every weight once per token (the tied head is the embedding)
    out = {"flop_per_token": flop_per_token}
    dtypes = [("float32", torch.float32)] + ([("bfloat16", torch.bfloat16)] if cpu_has_bf16_units() else [])
    for name, dt in dtypes:
        square = matmul_rate(dt, 2048, 2048, 2048)
        decode = matmul_rate(dt, batch, config.hidden_size, config.intermediate_size)
        out[name] = {"square_gflops": square, "decode_gflops": decode, "bound_tok_s": decode * 1e9 / flop_per_token,
                     "raw_decode_tok_s": raw_decode_step(mdir, name, batch, context)}
    return out


def print_limits(lim: dict, batch: int, context: int) -> None:
    from pspo.device import cpu_features

    print(f"cpu flags: {' '.join(sorted(cpu_features())) or 'none read'}", flush=True)
    for name in ("float32", "bfloat16"):
        if name not in lim:
            print(f"limits {name}: not measured (no AVX512-BF16 or AMX: bf16 matmuls run far slower than fp32 here)")
            continue
        r = lim[name]
        print(f"limits {name}: matmul {r['square_gflops']:.0f} GFLOP/s square, {r['decode_gflops']:.0f} decode-shaped "
              f"(batch {batch}) -> bound {r['bound_tok_s']:.0f} tok/s at {lim['flop_per_token'] / 1e9:.2f} GFLOP/token; "
              f"raw decode step (batch {batch}, {context}-token cache) {r['raw_decode_tok_s']:.0f} tok/s", flush=True)
    if "bfloat16" not in lim:
        return
    f, b = lim["float32"], lim["bfloat16"]
    print(f"bf16 / fp32: matmul {b['decode_gflops'] / f['decode_gflops']:.2f}x decode-shaped, "
          f"{b['square_gflops'] / f['square_gflops']:.2f}x square; raw decode step "
          f"{b['raw_decode_tok_s'] / f['raw_decode_tok_s']:.2f}x", flush=True)


def raw_share(tok_s: float, lim: dict, dtype: str) -> str:
    if dtype not in lim:
        return f"no {dtype} limits measured on this CPU"
    return f"{tok_s / lim[dtype]['raw_decode_tok_s']:.0%} of the raw decode step"


def share(tok_s: float, lim: dict, dtype: str) -> str:
    if dtype not in lim:
        return raw_share(tok_s, lim, dtype)
    return f"{raw_share(tok_s, lim, dtype)}, {tok_s / lim[dtype]['bound_tok_s']:.0%} of the {dtype} compute bound"


def run_eval(mdir: Path, data_file: Path, out: Path, *, dtype: str, max_new_tokens: int, threads: int | None,
             batch_size: int | None) -> tuple[dict, float]:
    from pspo.evaluation import evaluate

    t0 = time.perf_counter()
    m = evaluate(model_dir=mdir, benchmark="gsm8k", data_file=data_file, out_samples=out / f"{dtype}.samples.jsonl",
                 out_metrics=out / f"{dtype}.metrics.json", max_new_tokens=max_new_tokens, backend="transformers",
                 dtype=dtype, threads=threads, batch_size=batch_size)
    return m, time.perf_counter() - t0


def generator_run(backend: str, mdir: Path, questions: list[str], dtype: str, max_new_tokens: int,
                  threads: int | None, eager: bool | None = None, attention: str | None = None) -> dict:
    """Load one backend (timed apart) and generate greedily on ``questions``; its completion-token throughput."""
    from pspo.evaluation.transformers_loop import TransformersGenerator
    from pspo.evaluation.vllm_generator import VLLMGenerator
    from pspo.prompts import render_prompt

    t0 = time.perf_counter()
    gen = VLLMGenerator(str(mdir), dtype=dtype, threads=threads, enforce_eager=eager) if backend == "vllm" else \
        TransformersGenerator(str(mdir), dtype=dtype)
    if attention is not None:  # e.g. transformers' own sdpa instead of the loop's grouped decode attention
        gen.model.set_attn_implementation(attention)
    load = time.perf_counter() - t0
    prompts = [render_prompt(gen.tokenizer, q) for q in questions]
    out = gen.generate(prompts, max_new_tokens=max_new_tokens, progress=False)
    st = gen.last_stats
    return {"backend": backend, "dtype": dtype, "load_seconds": load, "generation_seconds": st["seconds"],
            "completion_tokens": st["completion_tokens"], "tokens_per_second": st["tokens_per_second"],
            "completions": [c[0].text for c in out]}


def vllm_comparison(mdir: Path, questions: list[str], max_new_tokens: int, threads: int | None, lim: dict) -> None:
    """vLLM and our loop in fp32 and bf16; each vLLM run in a child process (one LLM per process)."""
    import subprocess

    for dtype in ("float32", "bfloat16"):
        cmd = [sys.executable, __file__, "--child-vllm", dtype, "--prompts", str(len(questions)),
               "--max-new-tokens", str(max_new_tokens)] + (["--threads", str(threads)] if threads else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(f"vllm {dtype}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        v = json.loads(lines[-1])
        o = generator_run("transformers", mdir, questions, dtype, max_new_tokens, threads)
        same = sum(a == b for a, b in zip(v["completions"], o["completions"]))
        total = lambda r: r["load_seconds"] + r["generation_seconds"]  # noqa: E731
        print(f"{dtype}: vllm {v['tokens_per_second']:.1f} tok/s (load {v['load_seconds']:.1f} s), pspo loop "
              f"{o['tokens_per_second']:.1f} tok/s (load {o['load_seconds']:.1f} s); generation ratio vllm/loop "
              f"{v['tokens_per_second'] / o['tokens_per_second']:.2f}x, with load {total(o) / total(v):.2f}x; "
              f"identical greedy completions {same}/{len(questions)}", flush=True)
        print(f"  vllm {dtype} = {share(v['tokens_per_second'], lim, dtype)}; loop = "
              f"{share(o['tokens_per_second'], lim, dtype)}", flush=True)


def _vllm_child(spec: str, n: int, max_new_tokens: int, threads: int | None) -> dict | None:
    import subprocess

    cmd = [sys.executable, __file__, "--child-vllm", spec, "--prompts", str(n), "--max-new-tokens",
           str(max_new_tokens)] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        print(f"vllm {spec}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(lines[-1])


def attention_comparison(mdir: Path, questions: list[str], dtype: str, max_new_tokens: int,
                         threads: int | None) -> None:
    """The loop with its grouped decode attention vs transformers' sdpa (which copies the KV cache per query head
    under a padding mask), same prompts, one process."""
    from pspo.evaluation.transformers_loop import GROUPED_DECODE_ATTENTION

    runs = {name: generator_run("transformers", mdir, questions, dtype, max_new_tokens, threads, attention=name)
            for name in (GROUPED_DECODE_ATTENTION, "sdpa")}
    g, s = runs[GROUPED_DECODE_ATTENTION], runs["sdpa"]
    same = sum(a == b for a, b in zip(g["completions"], s["completions"]))
    print(f"attention ({dtype}): grouped decode {g['tokens_per_second']:.1f} tok/s, transformers' sdpa "
          f"{s['tokens_per_second']:.1f} tok/s: {g['tokens_per_second'] / s['tokens_per_second']:.2f}x; identical "
          f"greedy completions {same}/{len(questions)}", flush=True)


def vllm_compile_cost(questions: list[str], max_new_tokens: int, threads: int | None) -> None:
    """vLLM fp32 with enforce_eager (the CPU default) vs compiled, each in a fresh process (a cold compile cache
    is not guaranteed: a second run reuses $VLLM_CACHE_ROOT, which is what later jobs of a grid see)."""
    runs = {mode: _vllm_child(f"float32:{mode}", len(questions), max_new_tokens, threads)
            for mode in ("eager", "compiled", "compiled-again")}
    for mode, r in runs.items():
        if r:
            print(f"{mode}: load {r['load_seconds']:.1f} s, {r['tokens_per_second']:.1f} tok/s "
                  f"({r['completion_tokens']} tokens in {r['generation_seconds']:.1f} s)", flush=True)
    e, c, c2 = runs["eager"], runs["compiled"], runs["compiled-again"]
    if e and c and c2:
        same = sum(a == b for a, b in zip(e["completions"], c["completions"]))
        print(f"compiled / eager: load {c['load_seconds'] / e['load_seconds']:.2f}x (cached compile "
              f"{c2['load_seconds'] / e['load_seconds']:.2f}x), generation speed "
              f"{c['tokens_per_second'] / e['tokens_per_second']:.2f}x; identical greedy completions "
              f"{same}/{len(questions)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--naive-prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads for both paths (default: all cores)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--dtype-study", type=int, default=0, metavar="N",
                   help="also evaluate N prompts greedily in float32 and bfloat16 and compare the completions")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--attention", action="store_true",
                   help="also run the loop with transformers' sdpa attention instead of its grouped decode attention")
    p.add_argument("--vllm", action="store_true", help="also compare vLLM with our loop (fp32 and bf16)")
    p.add_argument("--vllm-compile", action="store_true",
                   help="only vLLM fp32 eager vs compiled (vLLM's default off CPU): load time and generation speed")
    p.add_argument("--child-vllm", metavar="DTYPE", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    import torch

    from pspo.io import read_jsonl, write_jsonl_atomic

    if a.threads:
        torch.set_num_threads(a.threads)
    mdir = model_dir()
    rows = read_jsonl(DATA_DIR / "gsm8k_test.jsonl")
    if a.child_vllm:
        dtype, _, mode = a.child_vllm.partition(":")
        print(json.dumps(generator_run("vllm", mdir, [r["question"] for r in rows[:a.prompts]], dtype,
                                       a.max_new_tokens, a.threads, eager=not mode.startswith("compiled"))))
        return 0
    if a.vllm_compile:
        vllm_compile_cost([r["question"] for r in rows[:a.prompts]], a.max_new_tokens, a.threads)
        return 0
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()}", flush=True)
    from transformers import AutoTokenizer

    from pspo.evaluation.backends import default_batch_size
    from pspo.evaluation.sampling import encode_prompts
    from pspo.prompts import render_prompt

    batch = min(a.batch_size or default_batch_size("cpu"), a.prompts)
    tok = AutoTokenizer.from_pretrained(mdir)
    lengths = [len(ids) for ids in encode_prompts(tok, [render_prompt(tok, r["question"]) for r in rows[:a.prompts]])]
    context = round(sum(lengths) / len(lengths) + a.max_new_tokens / 2)  # the mean cache length while decoding
    lim = limits(mdir, batch, context)
    print_limits(lim, batch, context)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "rows.jsonl"
        write_jsonl_atomic(data, rows[:a.prompts])
        m, wall = run_eval(mdir, data, tmp, dtype=a.dtype, max_new_tokens=a.max_new_tokens, threads=a.threads,
                           batch_size=a.batch_size)
        th = m["throughput"]
        ours = th["tokens_per_second"]
        print(f"pspo.evaluation ({m['generation']['dtype']}, batch {a.batch_size or 'default'}): {a.prompts} prompts, "
              f"{th['completion_tokens']} completion tokens in {th['generation_seconds']:.1f} s "
              f"(prefill {th['prefill_seconds']:.1f} s) = {ours:.1f} tok/s; evaluate() end to end {wall:.1f} s; "
              f"accuracy {m['accuracy']:.3f}, truncated {m['truncation_rate']:.3f}", flush=True)
        print(f"  = {share(ours, lim, m['generation']['dtype'])}", flush=True)
        dtype = m["generation"]["dtype"]
        decode, forward = th["generation_seconds"] - th["prefill_seconds"], th["decode_forward_seconds"]
        loop, forward_rate = decode - forward, th["decode_forward_rows"] / forward
        print(f"  decode steps: {decode:.1f} s = the model's forward {forward:.1f} s ({forward_rate:.0f} rows/s = "
              f"{raw_share(forward_rate, lim, dtype)}) + the loop's own work {loop:.1f} s ({loop / forward:.1%} of the "
              f"forward); decode alone {th['completion_tokens'] / decode:.1f} tok/s = "
              f"{raw_share(th['completion_tokens'] / decode, lim, dtype)}", flush=True)
        if not a.skip_naive:
            tokens, secs = naive_generate(mdir, [r["question"] for r in rows[:a.naive_prompts]], a.max_new_tokens)
            naive = tokens / secs
            print(f"naive batch-1 generate (float32): {a.naive_prompts} prompts, {tokens} completion tokens in "
                  f"{secs:.1f} s = {naive:.1f} tok/s", flush=True)
            print(f"speed-up: {ours / naive:.1f}x   (targets: >= 8x and >= 1500 tok/s)")
        if a.attention:
            attention_comparison(mdir, [r["question"] for r in rows[:a.prompts]], m["generation"]["dtype"],
                                 a.max_new_tokens, a.threads)
        if a.vllm:
            vllm_comparison(mdir, [r["question"] for r in rows[:a.prompts]], a.max_new_tokens, a.threads, lim)
        if a.dtype_study:
            write_jsonl_atomic(data, rows[:a.dtype_study])
            res = {}
            for dt in ("float32", "bfloat16"):
                mm, wall = run_eval(mdir, data, tmp, dtype=dt, max_new_tokens=a.max_new_tokens, threads=a.threads,
                                    batch_size=a.batch_size)
                res[dt] = (mm, read_jsonl(tmp / f"{dt}.samples.jsonl"))
                print(f"{dt}: accuracy {mm['accuracy']:.4f} ({mm['correct']}/{mm['n']}), "
                      f"{mm['throughput']['tokens_per_second']:.1f} tok/s = "
                      f"{share(mm['throughput']['tokens_per_second'], lim, dt)}", flush=True)
            f32, b16 = res["float32"][1], res["bfloat16"][1]
            differ = sum(x["completion"] != y["completion"] for x, y in zip(f32, b16))
            answer = sum(x["extracted"] != y["extracted"] for x, y in zip(f32, b16))
            verdict = sum(x["correct"] != y["correct"] for x, y in zip(f32, b16))
            print(json.dumps({"prompts": len(f32), "completions_differ": differ, "extracted_answer_differs": answer,
                              "correctness_flips": verdict,
                              "accuracy_fp32": res["float32"][0]["accuracy"],
                              "accuracy_bf16": res["bfloat16"][0]["accuracy"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
