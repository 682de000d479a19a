"""PSPOConfig validation, conformance of PSPOTrainer's loss with TRL 1.16's own GRPOTrainer loss, and short real
training runs of every objective on the tiny random Llama."""

from __future__ import annotations

import types

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from pspo.trainer import PSPOConfig, PSPOConfigError, PSPOTrainer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], bf16=False, use_cpu=True, disable_tqdm=True,
                gradient_checkpointing=False, per_device_train_batch_size=4, num_generations=4)
    base.update(kw)
    return base


def length_reward(completions, **kwargs):
    """A reward with variance inside every group on a random model: characters of the completion / 50."""
    return [len(c[0]["content"] if isinstance(c, list) else c) / 50.0 for c in completions]


def _dataset(n=8):
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"What is {i} + {i + 3}? Think step by step."}], "answer": str(2 * i + 3)}
        for i in range(n)
    ])


# ------------------------------------------------------------------------------------------------- config
def test_config_defaults(tmp_path):
    c = PSPOConfig(**_cfg(tmp_path))
    assert c.objective == "pspo" and c.smoothing_alpha == 0.1 and c.loss_type == "dapo" and c.beta == 0.0
    for objective in ("clip", "noclip", "sigmoid"):
        c = PSPOConfig(**_cfg(tmp_path, objective=objective))  # GRPOConfig defaults never trip the checks
        assert c.smoothing_alpha == 0.1  # the default: unused by this objective
    c = PSPOConfig(**_cfg(tmp_path, objective="clip", epsilon=0.1, epsilon_high=0.3, num_iterations=2))
    assert (c.epsilon, c.epsilon_high) == (0.1, 0.3)
    c = PSPOConfig(**_cfg(tmp_path, objective="sigmoid", sapo_temperature_pos=2.0, sapo_temperature_neg=1.5))
    assert c.sapo_temperature_pos == 2.0
    assert PSPOConfig(**_cfg(tmp_path, smoothing_alpha=0)).smoothing_alpha == 0.0
    assert PSPOConfig(**_cfg(tmp_path, smoothing_alpha=1)).smoothing_alpha == 1.0


def test_trainer_refuses_a_plain_grpo_config_before_loading_anything(tmp_path):
    args = GRPOConfig(**_cfg(tmp_path, loss_type="dapo"))
    with pytest.raises(PSPOConfigError, match="PSPOTrainer needs a PSPOConfig, got GRPOConfig"):
        PSPOTrainer(model=str(tmp_path / "no-such-model"), reward_funcs=length_reward, args=args)


def test_trainer_builds_a_default_config_like_trl(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = PSPOTrainer(model=str(tiny_model_dir), reward_funcs=length_reward, train_dataset=_dataset())
    assert isinstance(trainer.args, PSPOConfig) and trainer.args.objective == "pspo"
    assert trainer.args.output_dir.endswith(f"{tiny_model_dir.name}-PSPO") and trainer.args.smoothing_alpha == 0.1
    assert {"trl", "grpo", "pspo"} <= set(PSPOTrainer._tag_names)


def test_alpha_default_is_the_workflow_main_alpha():
    from pspo.config import schema_default

    assert PSPOConfig.__dataclass_fields__["smoothing_alpha"].default == schema_default("main_alpha") == 0.1


@pytest.mark.parametrize("kw, match", [
    (dict(smoothing_alpha=-0.1), r"smoothing_alpha must be a number in \[0, 1\]"),
    (dict(smoothing_alpha=1.5), r"smoothing_alpha must be a number in \[0, 1\]"),
    (dict(smoothing_alpha=float("nan")), r"smoothing_alpha must be a number in \[0, 1\]"),
    (dict(objective="ppo"), "unknown objective 'ppo'; valid: clip, noclip, sigmoid, pspo"),
    (dict(objective="clip", epsilon=-0.1), "epsilon must be a finite number >= 0"),
    (dict(objective="clip", epsilon_high=-1.0), "epsilon_high must be a finite number >= 0"),
    (dict(objective="sigmoid", sapo_temperature_pos=0.0), "sapo_temperature_pos .* must be a finite number > 0"),
    (dict(objective="sigmoid", sapo_temperature_neg=-1.0), "sapo_temperature_neg .* must be a finite number > 0"),
    (dict(num_iterations=0), "num_iterations .* must be an integer >= 1"),
    (dict(objective="clip", smoothing_alpha=0.3), "smoothing_alpha=0.3 applies to objective='pspo' only"),
    (dict(objective="noclip", smoothing_alpha=0.5), "smoothing_alpha=0.5 applies to objective='pspo' only"),
    (dict(epsilon=0.1), "epsilon=0.1 applies to objective='clip' only, but objective='pspo'"),
    (dict(objective="noclip", epsilon_high=0.28), "epsilon_high=0.28 applies to objective='clip' only"),
    (dict(objective="clip", sapo_temperature_pos=2.0), "sapo_temperature_pos=2.0 applies to objective='sigmoid'"),
    (dict(objective="pspo", sapo_temperature_neg=2.0), "sapo_temperature_neg=2.0 applies to objective='sigmoid'"),
    (dict(objective="sigmoid", epsilon=0.3), "epsilon=0.3 applies to objective='clip' only"),
    (dict(loss_type="grpo"), "loss_type must be 'dapo'"),
    (dict(importance_sampling_level="sequence"), "importance_sampling_level must be 'token'"),
    (dict(objective="clip", delta=2.0), "delta .* not supported"),
    (dict(entropy_coef=0.01), "entropy bonus"),
    (dict(beta=-0.1), "beta must be a finite number >= 0"),
])
def test_config_errors(tmp_path, kw, match):
    with pytest.raises(PSPOConfigError, match=match) as info:
        PSPOConfig(**_cfg(tmp_path, **kw))
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------- conformance
def _fake_batch(seed=0, B=8, P=5, T=7, spread=0.5):
    g = torch.Generator().manual_seed(seed)
    completion_mask = (torch.rand(B, T, generator=g) > 0.25).long()
    completion_mask[:, 0] = 1
    logps = -torch.rand(B, T, generator=g) * 3
    inputs = {
        "prompt_ids": torch.randint(0, 100, (B, P), generator=g), "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(0, 100, (B, T), generator=g), "completion_mask": completion_mask,
        "advantages": torch.randn(B, generator=g),
        # ratios spread well beyond [1 - eps, 1 + eps] so that clipping is active on some tokens
        "old_per_token_logps": logps + torch.randn(B, T, generator=g) * spread,
        "ref_per_token_logps": logps + torch.randn(B, T, generator=g) * 0.3,
        "importance_sampling_ratio": torch.rand(B, T, generator=g) + 0.5,
        "num_items_in_batch": completion_mask.sum() * 2,  # the generation batch spans 2 micro-batches
    }
    return inputs, logps, torch.rand(B, T, generator=g) * 5


def _loss_and_grad(trainer, inputs, logps, entropies, grad_accum=2):
    leaf = logps.clone().requires_grad_()
    trainer._get_per_token_logps_and_entropies = types.MethodType(
        lambda self, *a, **k: (leaf, entropies, None), trainer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = grad_accum
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory):
    """Trainers are built once (weights are not used: per-token logps are injected)."""
    tmp = tmp_path_factory.mktemp("conf")
    out = {}
    for beta in (0.0, 0.04):
        common = _cfg(tmp, gradient_accumulation_steps=2, num_iterations=2, beta=beta)
        out["trl", beta] = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=length_reward,
                                       args=GRPOConfig(**common, loss_type="dapo", epsilon=0.2, epsilon_high=0.28),
                                       train_dataset=_dataset())
        out["pspo", beta] = PSPOTrainer(model=str(tiny_model_dir), reward_funcs=length_reward,
                                        args=PSPOConfig(**common, objective="clip", epsilon=0.2, epsilon_high=0.28),
                                        train_dataset=_dataset())
    sapo = _cfg(tmp, gradient_accumulation_steps=1, num_iterations=2)
    out["sapo"] = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=length_reward,
                              args=GRPOConfig(**sapo, loss_type="sapo"), train_dataset=_dataset())
    out["sigmoid"] = PSPOTrainer(model=str(tiny_model_dir), reward_funcs=length_reward,
                                 args=PSPOConfig(**sapo, objective="sigmoid"), train_dataset=_dataset())
    return out


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("vllm_is", [False, True])
def test_clip_matches_trl_dapo(built, beta, vllm_is):
    inputs, logps, entropies = _fake_batch(seed=int(beta * 100) + vllm_is)
    results = []
    for kind in ("trl", "pspo"):
        trainer = built[kind, beta]
        # TRL's vLLM importance-sampling correction path, without vLLM: the flag and the ratio tensor suffice
        trainer.use_vllm, trainer.vllm_importance_sampling_correction = vllm_is, vllm_is
        results.append(_loss_and_grad(trainer, inputs, logps, entropies))
    (l_trl, g_trl), (l_ours, g_ours) = results
    assert g_trl.abs().sum() > 0 and (g_trl == 0).any()  # some tokens clipped or masked
    torch.testing.assert_close(l_ours, l_trl, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_ours, g_trl, rtol=1e-6, atol=1e-6)
    m_trl, m_ours = built["trl", beta]._metrics["train"], built["pspo", beta]._metrics["train"]
    assert m_trl["clip_ratio/region_mean"][-1] > 0  # clipping is active on some tokens
    assert m_ours["entropy"][-1] == pytest.approx(m_trl["entropy"][-1])
    assert m_ours["objective/clip_fraction"][-1] == pytest.approx(m_trl["clip_ratio/region_mean"][-1])
    for name in ("low_mean", "high_mean", "region_mean", "low_min", "high_max"):  # TRL's own names, TRL's values
        assert m_ours[f"clip_ratio/{name}"][-1] == pytest.approx(m_trl[f"clip_ratio/{name}"][-1]), name
    if beta:
        assert m_ours["kl"][-1] == pytest.approx(m_trl["kl"][-1])


def test_sigmoid_matches_trl_sapo_per_token(built):
    """TRL's sapo aggregates per sequence; ours the dapo way. The per-token surrogate must be the same: compare
    single-sequence losses (where both aggregations reduce to sum / length) and per-token gradients."""
    inputs, logps, entropies = _fake_batch(seed=5, spread=1.0)
    for b in range(3):
        one = {k: (v[b:b + 1] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in inputs.items()}
        one["num_items_in_batch"] = one["completion_mask"].sum()
        (l_trl, g_trl), (l_ours, g_ours) = (
            _loss_and_grad(built[k], one, logps[b:b + 1], entropies[b:b + 1], grad_accum=1) for k in ("sapo", "sigmoid"))
        torch.testing.assert_close(l_ours, l_trl, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(g_ours, g_trl, rtol=1e-6, atol=1e-7)


def test_pspo_trainer_loss_is_scaled_noclip_in_gradient(built, tiny_model_dir, tmp_path):
    """Through the real _compute_loss: PSPO's gradient = (1 - alpha) x noclip's (aggregation is shared)."""
    inputs, logps, entropies = _fake_batch(seed=9, spread=1.5)
    trainer = built["pspo", 0.0]
    grads = {}
    for objective, alpha in (("noclip", None), ("pspo", 0.3)):
        trainer.args.objective, trainer.args.smoothing_alpha, trainer.objective = objective, alpha, objective
        trainer.use_vllm = trainer.vllm_importance_sampling_correction = False
        grads[objective] = _loss_and_grad(trainer, inputs, logps, entropies)[1]
    trainer.args.objective = trainer.objective = "clip"
    trainer.args.smoothing_alpha = None
    torch.testing.assert_close(grads["pspo"], 0.7 * grads["noclip"], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------- training
def _train(tiny_model_dir, tmp_path, objective, num_iterations, steps=2, **kw):
    args = PSPOConfig(**_cfg(
        tmp_path, objective=objective, num_iterations=num_iterations, gradient_accumulation_steps=1,
        max_completion_length=4, max_steps=steps, logging_steps=1, learning_rate=2e-2, save_strategy="no",
        temperature=1.0, seed=0, **kw))
    trainer = PSPOTrainer(model=str(tiny_model_dir), reward_funcs=length_reward, args=args, train_dataset=_dataset())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in trainer.model.named_parameters())
    rows = [r for r in trainer.state.log_history if "loss" in r]
    return moved, rows


EXTRA = {"clip": "objective/clip_fraction", "pspo": "objective/smoothed_ratio_mean",
         "sigmoid": "objective/sigmoid_gate_mean", "noclip": None}
RATIO_KEYS = ["objective/ratio_mean", "objective/ratio_std", "objective/ratio_min", "objective/ratio_max"]


@pytest.mark.parametrize("objective", ["clip", "noclip", "sigmoid", "pspo"])
def test_training_mu2_second_pass_is_off_policy(tiny_model_dir, tmp_path, objective):
    moved, rows = _train(tiny_model_dir, tmp_path, objective, num_iterations=2)
    assert moved > 0
    assert len(rows) == 2
    for row in rows:
        for key in RATIO_KEYS + ["loss", "grad_norm", "entropy"] + ([EXTRA[objective]] if EXTRA[objective] else []):
            assert key in row and row[key] is not None, key
    first, second = rows
    assert "reward" in first and first["reward_std"] > 0  # the first step generated, with reward variance
    assert first["objective/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    # the second step reuses the generations after one optimizer step: the ratio is no longer 1
    assert second["objective/ratio_std"] > 1e-3
    # the reused pass is also logged on its own; the first pass never is
    assert not any(k.startswith("objective/reused/") for k in first)
    for key in RATIO_KEYS + ([EXTRA[objective]] if EXTRA[objective] else []):
        assert second[key.replace("objective/", "objective/reused/")] == second[key], key
    assert second["objective/ratio_min"] < 1.0 < second["objective/ratio_max"]
    if objective == "pspo":
        alpha = 0.1
        assert second["objective/smoothed_ratio_mean"] == pytest.approx(
            (1 - alpha) * second["objective/ratio_mean"] + alpha, rel=1e-5)
    if objective == "sigmoid":
        assert 0 < second["objective/sigmoid_gate_mean"] < 1


def test_training_mu1_ratio_is_exactly_one(tiny_model_dir, tmp_path):
    moved, rows = _train(tiny_model_dir, tmp_path, "clip", num_iterations=1)
    assert moved > 0
    for row in rows:
        assert (row["objective/ratio_mean"], row["objective/ratio_std"]) == (1.0, 0.0)
        assert row["objective/ratio_min"] == row["objective/ratio_max"] == 1.0
        assert row["objective/clip_fraction"] == 0.0


class _OneProcess:
    """The two accelerator calls the metrics make, for a single process."""

    @staticmethod
    def reduce(x, reduction="sum"):
        return x

    @staticmethod
    def gather(x):
        return x


@pytest.mark.parametrize("spread", [3e-4, 1e-3, 0.1])
def test_ratio_std_is_exact_for_small_spreads(spread):
    # At the paper's learning rates the ratio moves by ~1e-4; E[r^2] - E[r]^2 in float32 logged such spreads as 0.
    import collections

    g = torch.Generator().manual_seed(0)
    ratio = 1 + spread * torch.randn(8, 1024, generator=g, dtype=torch.float64)
    log_ratio = ratio.log().to(torch.float32)
    mask = torch.ones(8, 1024)
    mask[:, 1000:] = 0
    fake = types.SimpleNamespace(objective="noclip", accelerator=_OneProcess(),
                                 _metrics={"train": collections.defaultdict(list)}, _pass_index=lambda mode: 1)
    PSPOTrainer._log_objective_metrics(fake, "train", log_ratio, torch.ones(8, 1), mask)
    logged = fake._metrics["train"]
    kept = log_ratio.double().exp()[:, :1000]
    assert logged["objective/ratio_std"][0] == pytest.approx(kept.std(unbiased=False).item(), rel=1e-3)
    assert logged["objective/ratio_mean"][0] == pytest.approx(kept.mean().item(), abs=1e-7)
    assert logged["objective/ratio_max"][0] == pytest.approx(kept.max().item(), rel=1e-6)
    assert logged["objective/reused/ratio_std"] == logged["objective/ratio_std"]  # a reused pass: logged apart too


def test_reuse_that_is_never_off_policy_is_refused(tmp_path):
    # 4 accumulation steps, a generation batch every 2 micro-steps, mu = 2: TRL skips old log-probs, r = 1 always
    kw = dict(num_iterations=2, gradient_accumulation_steps=4, steps_per_generation=2)
    with pytest.raises(PSPOConfigError, match="reuses nothing off-policy: gradient_accumulation_steps=4") as info:
        PSPOConfig(**_cfg(tmp_path, **kw))
    assert "\n" not in str(info.value)
    assert PSPOConfig(**_cfg(tmp_path, num_iterations=2, gradient_accumulation_steps=4)).steps_per_generation == 4


def test_an_objective_without_reuse_warns_that_it_changes_only_the_scale(tmp_path):
    with pytest.warns(UserWarning, match="objective='clip' with num_iterations=1"):
        PSPOConfig(**_cfg(tmp_path, objective="clip", num_iterations=1))
