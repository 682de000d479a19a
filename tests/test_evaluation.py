"""pspo.evaluation on the packaged SmolLM2-135M-Instruct (CPU, offline): determinism, batching, metrics, bad input.

Small limits (8 prompts x 32 new tokens) keep this file around a minute or two on 2 cores. Generation runs with
one torch thread: on a 2-core machine shared with other jobs, two OpenMP threads are several times slower.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from pspo.errors import PSPOError
from pspo.evaluation import backends as B
from pspo.evaluation import evaluate, metrics_from_samples
from pspo.evaluation import sampling as S
from pspo.evaluation import transformers_loop as TL
from pspo.evaluation import vllm_generator as VG
from pspo.io import read_jsonl, write_jsonl_atomic

N_PROMPTS, MAX_NEW = 8, 32
THREADS = 1


@pytest.fixture(scope="module")
def rows_file(data_dir, tmp_path_factory) -> Path:
    rows = read_jsonl(data_dir / "gsm8k_test.jsonl")[:N_PROMPTS]
    path = tmp_path_factory.mktemp("eval-data") / "rows.jsonl"
    write_jsonl_atomic(path, rows)
    return path


@pytest.fixture(scope="module")
def two_rows_file(rows_file) -> Path:
    path = rows_file.parent / "two.jsonl"
    write_jsonl_atomic(path, read_jsonl(rows_file)[:2])
    return path


@pytest.fixture(scope="module")
def generator(smollm2_dir):
    return TL.TransformersGenerator(str(smollm2_dir))  # default dtype


def _run(model_dir, rows_file, out: Path, generator=None, **kw):
    kw.setdefault("max_new_tokens", MAX_NEW)
    kw.setdefault("backend", "transformers")
    m = evaluate(model_dir=model_dir, benchmark="gsm8k", data_file=rows_file, out_samples=out / "s.jsonl",
                 out_metrics=out / "m.json", threads=THREADS, progress=False,
                 generator=generator, **kw)
    return m, out / "s.jsonl", out / "m.json"


@pytest.fixture(scope="module")
def greedy_run(smollm2_dir, rows_file, generator, tmp_path_factory):
    return _run(smollm2_dir, rows_file, tmp_path_factory.mktemp("greedy"), generator)


def test_default_dtype_on_cpu_is_float32(generator):
    assert (generator.device, generator.dtype) == ("cpu", "float32")
    assert B.resolve_backend("auto") == "transformers"  # no CUDA / no vllm here


def test_sample_file_schema(greedy_run, rows_file):
    m, samples, _ = greedy_run
    rows = read_jsonl(samples)
    src = read_jsonl(rows_file)
    assert [r["id"] for r in rows] == [r["id"] for r in src]  # input order
    for r, s in zip(rows, src):
        assert set(r) == {"id", "prompt", "completion", "extracted", "gold", "correct", "formatted",
                          "completion_tokens", "finish_reason"}
        assert r["gold"] == s["answer"] and s["question"] in r["prompt"]
        assert r["finish_reason"] in ("stop", "length")
        assert 1 <= r["completion_tokens"] <= MAX_NEW
        assert (r["finish_reason"] == "length") == (r["completion_tokens"] == MAX_NEW) or r["finish_reason"] == "stop"
        assert "<|im_end|>" not in r["completion"]
    assert m["throughput"]["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    g = m["generation"]
    assert (g["temperature"], g["n_samples"], g["max_new_tokens"], g["dtype"]) == (0.0, 1, MAX_NEW, "float32")
    prov = m["provenance"]
    assert prov["model_fingerprint"]["sha256"] and prov["data_sha256"]["rows.jsonl"]
    assert prov["versions"]["torch"] and prov["versions"]["transformers"]


def test_greedy_twice_is_byte_identical(greedy_run, smollm2_dir, rows_file, tmp_path):
    _, samples, _ = greedy_run
    # a fresh model load and a different batch size: the same bytes
    m2, samples2, _ = _run(smollm2_dir, rows_file, tmp_path, batch_size=3)
    assert samples.read_bytes() == samples2.read_bytes()


def test_batched_equals_batch_size_one(greedy_run, smollm2_dir, rows_file, generator, tmp_path):
    _, samples, _ = greedy_run
    _, samples1, _ = _run(smollm2_dir, rows_file, tmp_path, generator, batch_size=1)
    assert samples.read_bytes() == samples1.read_bytes()


def test_greedy_matches_transformers_generate(greedy_run, generator):
    """Our loop (shared prefix, length buckets, dropped rows) gives HF generate's greedy tokens."""
    import torch

    from pspo.prompts import render_prompt

    prompts = [r["prompt"] for r in read_jsonl(greedy_run[1])[:2]]
    ours = generator.generate(prompts, max_new_tokens=12, progress=False, prefix_hint=render_prompt(generator.tokenizer, ""))
    tok = generator.tokenizer
    with torch.inference_mode():
        for p, o in zip(prompts, ours):
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
            out = generator.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                           do_sample=False, pad_token_id=tok.eos_token_id)
            assert tuple(out[0, ids.shape[1]:].tolist()) == o[0].token_ids


def test_grouped_decode_attention_is_sdpa_on_a_padded_gqa_batch(generator):
    """One new token per row over grouped KV heads, with a padding mask and the cache a view of a larger buffer (as
    the loop's preallocated layers hold it): the regrouped attention equals transformers' sdpa, which copies the
    cache once per query head; the loop's model uses it."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    b, kv, groups, length, d = 5, 3, 3, 17, 16
    module = types.SimpleNamespace(num_key_value_groups=groups, is_causal=True, training=False)
    q = torch.randn(b, 1, kv * groups, d).transpose(1, 2)  # as the model hands it over
    k, v = torch.randn(b, kv, length + 8, d)[:, :, :length], torch.randn(b, kv, length + 8, d)[:, :, :length]
    mask = torch.ones(b, 1, 1, length, dtype=torch.bool)
    mask[1, ..., :6] = False
    mask[3, ..., :2] = False
    ours, _ = TL._grouped_decode_attention(module, q, k, v, mask, scaling=d ** -0.5)
    theirs, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=d ** -0.5)
    assert ours.shape == theirs.shape == (b, 1, kv * groups, d)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    unmasked, _ = TL._grouped_decode_attention(module, q, k, v, None, scaling=d ** -0.5)
    assert not torch.allclose(unmasked[1], theirs[1], atol=1e-3)  # the mask is applied (the check can fail)
    assert generator.attention == TL.GROUPED_DECODE_ATTENTION
    assert generator.model.config._attn_implementation == TL.GROUPED_DECODE_ATTENTION


def test_metrics_recomputed_from_samples_equal_metrics_json(greedy_run):
    _, samples, metrics = greedy_run
    stored = json.loads(metrics.read_text())
    again = metrics_from_samples(samples)
    assert again == {k: stored[k] for k in again}
    assert {"accuracy", "accuracy_ci95", "n", "format_rate", "truncation_rate", "repetition_rate",
            "mean_completion_tokens", "throughput", "provenance", "generation"} <= set(stored)
    import hashlib

    assert stored["samples_file"]["sha256"] == hashlib.sha256(samples.read_bytes()).hexdigest()


def test_sampling_is_seeded_and_reports_pass_at_k(smollm2_dir, rows_file, generator, tmp_path):
    few = tmp_path / "few.jsonl"
    write_jsonl_atomic(few, read_jsonl(rows_file)[:3])
    kw = dict(temperature=0.8, top_p=0.9, n_samples=3, max_new_tokens=12)
    m, s, _ = _run(smollm2_dir, few, tmp_path / "a", generator, seed=1, **kw)
    _, s_again, _ = _run(smollm2_dir, few, tmp_path / "b", generator, seed=1, batch_size=4, **kw)
    _, s_other, _ = _run(smollm2_dir, few, tmp_path / "c", generator, seed=2, **kw)
    assert s.read_bytes() == s_again.read_bytes()  # same seed, other batch size: same samples
    assert s.read_bytes() != s_other.read_bytes()
    rows = read_jsonl(s)
    assert len(rows) == 3 * 3 and [r["sample"] for r in rows[:3]] == [0, 1, 2]
    assert len({r["completion"] for r in rows[:3]}) > 1  # samples of one prompt differ
    assert set(m["pass_at_k"]) == {"1", "2", "3"} and m["majority_accuracy"] is not None
    assert m["pass_at_k"]["1"] == pytest.approx(m["accuracy"])


def test_sample_tokens_respects_top_p():
    import torch

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(S.sample_tokens(logits, torch.tensor([u], dtype=torch.float64), 1.0, 0.7))
            for u in [i / 200 for i in range(200)]}
    assert seen == {0, 1}  # nucleus {0.5, 0.3} reaches 0.7
    seen = {int(S.sample_tokens(logits, torch.tensor([u], dtype=torch.float64), 1.0, 1.0))
            for u in [i / 200 for i in range(200)]}
    assert seen == {0, 1, 2, 3}
    # frequencies follow the distribution (inverse CDF on an even grid of uniforms)
    picks = [int(S.sample_tokens(logits, torch.tensor([(i + 0.5) / 1000], dtype=torch.float64), 1.0, 1.0))
             for i in range(1000)]
    assert [picks.count(t) for t in range(4)] == [500, 300, 150, 50]


# --- bad input: one clear line ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"n_samples": 0}, "n_samples"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": 0.0, "n_samples": 4}, "greedy"),
    ({"top_p": 0.0, "temperature": 0.7}, "top_p"),
    ({"backend": "tgi"}, "backend"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_settings(kw, match, smollm2_dir, rows_file, tmp_path):
    with pytest.raises(PSPOError, match=match) as e:
        _run(smollm2_dir, rows_file, tmp_path, **kw)
    assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_not_a_model_dir(rows_file, tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(PSPOError, match="not a model directory"):
        _run(tmp_path / "model", rows_file, tmp_path)


def test_empty_benchmark_file(smollm2_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(PSPOError, match="no rows"):
        _run(smollm2_dir, empty, tmp_path)
    with pytest.raises(PSPOError, match="not found"):
        _run(smollm2_dir, tmp_path / "missing.jsonl", tmp_path)


def test_vllm_not_installed_is_one_line(smollm2_dir, rows_file, tmp_path, monkeypatch):
    monkeypatch.setattr(B, "vllm_installed", lambda: False)
    with pytest.raises(PSPOError, match="vllm"):
        _run(smollm2_dir, rows_file, tmp_path, backend="vllm")


def test_cli_bad_input_prints_one_line(smollm2_dir, rows_file, tmp_path, capsys):
    from pspo.cli import main

    rc = main(["evaluate", "--model-dir", str(smollm2_dir), "--benchmark", "gsm8k", "--data-file", str(rows_file),
               "--out-samples", str(tmp_path / "s.jsonl"), "--out-metrics", str(tmp_path / "m.json"),
               "--max-new-tokens", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "max_new_tokens" in err


def test_cli_runs(smollm2_dir, data_dir, tmp_path, capsys):
    from pspo.cli import main

    data = tmp_path / "two.jsonl"
    write_jsonl_atomic(data, read_jsonl(data_dir / "gsm8k_test.jsonl")[:2])
    rc = main(["evaluate", "--model-dir", str(smollm2_dir), "--benchmark", "gsm8k", "--data-file", str(data),
               "--out-samples", str(tmp_path / "s.jsonl"), "--out-metrics", str(tmp_path / "m.json"),
               "--max-new-tokens", "8", "--threads", "1", "--no-progress"])
    assert rc == 0 and "accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 2


# --- a killed run leaves no file a rerun would trust ----------------------------------------------------------------
def test_exception_mid_generation_leaves_no_output(smollm2_dir, rows_file, generator, tmp_path, monkeypatch):
    calls = {"n": 0}
    forward = generator.model.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # a few decode steps in
            raise KeyboardInterrupt("killed")
        return forward(*args, **kwargs)

    monkeypatch.setattr(generator.model, "forward", failing_forward)
    with pytest.raises(KeyboardInterrupt):
        _run(smollm2_dir, rows_file, tmp_path, generator)
    assert calls["n"] == 6
    assert not list(tmp_path.iterdir())  # no outputs, no temporaries


def test_failure_while_writing_keeps_the_old_pair(smollm2_dir, two_rows_file, generator, tmp_path, monkeypatch):
    """A rerun that dies while writing leaves the previous run's files untouched (and no temporaries)."""
    m, s, mf = _run(smollm2_dir, two_rows_file, tmp_path, generator, max_new_tokens=4)
    assert mf.is_file()
    import pspo.evaluation.runner as runner

    def boom(*a, **k):
        raise RuntimeError("provenance failed")

    monkeypatch.setattr(runner, "model_fingerprint", boom)
    with pytest.raises(RuntimeError):
        _run(smollm2_dir, two_rows_file, tmp_path, generator, max_new_tokens=5)
    # the old pair is untouched (nothing was renamed), and no temporaries remain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "s.jsonl"]
    assert json.loads(mf.read_text())["generation"]["max_new_tokens"] == 4
    assert all(r["completion_tokens"] <= 4 for r in read_jsonl(s))


# --- vLLM backend: the interface, with a stand-in vllm module (vLLM itself needs a GPU) ---------------------------
def test_vllm_generator_maps_outputs(monkeypatch, generator):
    captured = {}

    class FakeLLM:
        def __init__(self, model, dtype, seed, **kw):
            captured["init"] = (model, dtype, seed)

        def get_tokenizer(self):
            return generator.tokenizer

        def generate(self, prompts, params, use_tqdm=True):
            captured["prompts"], captured["params"] = prompts, params
            out = []
            for _ in prompts:
                samples = [types.SimpleNamespace(index=i, text=f"#### {i}", token_ids=[5, 6, 2][: 2 + i],
                                                 finish_reason="stop" if i else "length") for i in (1, 0)]
                out.append(types.SimpleNamespace(outputs=samples))
            return out

    class FakeParams:
        def __init__(self, **kw):
            self.kw = kw

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeParams))
    monkeypatch.setattr(B, "cuda_available", lambda: True)  # the CUDA build's path (the CPU one: tests/test_vllm.py)
    monkeypatch.setattr(B, "resolve_dtype", lambda dtype, device: "bfloat16")
    gen = VG.VLLMGenerator("/some/model", seed=3)
    res = gen.generate(["Q1", "Q2"], n=2, temperature=0.7, top_p=0.9, max_new_tokens=8, seed=3)
    assert captured["init"] == ("/some/model", "bfloat16", 3)
    params = captured["params"]  # one SamplingParams per prompt
    assert len(params) == 2 and all(p.kw["n"] == 2 and p.kw["max_tokens"] == 8 for p in params)
    # a seed per prompt (vLLM's n samples of a prompt use seed + sample index): distinct across prompts, set by
    # (seed, prompt index) alone, 31-bit
    seeds = [p.kw["seed"] for p in params]
    assert seeds == [S.prompt_seed(3, 0), S.prompt_seed(3, 1)] and len(set(seeds)) == 2
    assert all(0 <= s < 2**31 for s in seeds)
    assert captured["prompts"][0]["prompt_token_ids"] == S.encode_prompts(generator.tokenizer, ["Q1"])[0]
    assert [c.text for c in res[0]] == ["#### 0", "#### 1"]  # sorted by sample index
    assert [c.finish_reason for c in res[0]] == ["length", "stop"]
    assert gen.last_stats["completion_tokens"] == 2 * (2 + 3)
    gen.generate(["Q1", "Q2"], n=1, temperature=0.0, max_new_tokens=8, seed=3)
    assert [p.kw["seed"] for p in captured["params"]] == [None, None]  # greedy: no seed


def test_prompt_seeds_differ_by_prompt_and_seed():
    seeds = {(s, i): S.prompt_seed(s, i) for s in range(3) for i in range(200)}
    assert len(set(seeds.values())) == len(seeds)


def test_auto_backend_picks_vllm_only_with_cuda_and_vllm(monkeypatch):
    monkeypatch.setattr(B, "cuda_available", lambda: True)
    monkeypatch.setattr(B, "vllm_installed", lambda: True)
    assert B.resolve_backend("auto") == "vllm"
    monkeypatch.setattr(B, "vllm_installed", lambda: False)
    assert B.resolve_backend("auto") == "transformers"
    monkeypatch.setattr(B, "cuda_available", lambda: False)
    monkeypatch.setattr(B, "vllm_installed", lambda: True)
    monkeypatch.setattr(B.vllm_env, "is_cpu_build", lambda: False)  # the CUDA build on a machine without a GPU
    assert B.resolve_backend("auto") == "transformers"
    with pytest.raises(PSPOError, match="CUDA"):
        B.resolve_backend("vllm")
    monkeypatch.setattr(B.vllm_env, "is_cpu_build", lambda: True)  # vLLM's CPU build: allowed, but not picked
    assert B.resolve_backend("vllm") == "vllm"
    assert B.resolve_backend("auto") == "transformers"


def test_kill_between_renames_leaves_no_metrics(smollm2_dir, two_rows_file, generator, tmp_path, monkeypatch):
    """If the run dies after its samples file is in place but before its metrics file is, no metrics file
    remains (the old one was removed first), so the pair is never mismatched and a rerun recomputes both."""
    _run(smollm2_dir, two_rows_file, tmp_path, generator, max_new_tokens=4)
    import pspo.io

    real_replace = pspo.io.os.replace

    def replace(src, dst):
        if Path(dst).name == "m.json":
            raise KeyboardInterrupt("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(pspo.io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _run(smollm2_dir, two_rows_file, tmp_path, generator, max_new_tokens=5, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]
