"""pspo.train.learning_signal on synthetic log rows: a run that never got a gradient is flagged, not reported."""

from __future__ import annotations

import csv
import io

import pytest

from pspo.train_log import learning_signal


def _gen(step, grad, frac_zero=0.0, reward_std=0.5):
    """A generation step's row as log_rows returns it."""
    return {"step": step, "loss": 0.0, "grad_norm": grad, "reward": 0.5, "reward_std": reward_std,
            "frac_reward_zero_std": frac_zero}


def _reuse(step, grad):
    """A step that reuses the last generations (mu > 1): no reward columns."""
    return {"step": step, "loss": 0.0, "grad_norm": grad}


def test_healthy_run_is_trained_without_warnings():
    s = learning_signal([_gen(1, 0.3), _reuse(2, 0.2), _gen(3, 0.1, frac_zero=0.5), _reuse(4, 0.4)])
    assert s == {"steps": 4, "nonzero_grad_steps": 4, "generation_steps": 2, "steps_with_reward_spread": 2,
                 "nonzero_grad_fraction": 1.0, "trained": True, "warnings": []}


def test_all_zero_gradients_is_no_learning_signal():
    s = learning_signal([_gen(1, 0.0), _reuse(2, 0.0), _gen(3, float("nan")), {"step": 4, "loss": 0.0}])
    assert not s["trained"] and s["nonzero_grad_steps"] == 0 and s["steps"] == 4
    assert s["nonzero_grad_fraction"] == 0.0
    [w] = s["warnings"]
    assert w.startswith("no learning signal: every optimiser step had gradient norm 0") and "\n" not in w


def test_zero_reward_spread_on_every_generation_step_is_no_learning_signal():
    rows = [_gen(1, 0.0, frac_zero=1.0, reward_std=0.0), _reuse(2, 0.0), _gen(3, 0.0, frac_zero=1.0)]
    s = learning_signal(rows)
    assert not s["trained"] and s["generation_steps"] == 2 and s["steps_with_reward_spread"] == 0
    [w] = s["warnings"]
    assert w.startswith("no learning signal: every generation step had zero reward spread") and "\n" not in w
    assert "max_completion_length" in w  # names the fix
    # reward_std 0 alone (no frac column) also means no spread
    assert not learning_signal([{"step": 1, "loss": 0.0, "grad_norm": 0.0, "reward_std": 0.0}])["trained"]


def test_mixed_run_reports_the_fraction_and_a_soft_warning_below_80_percent():
    rows = [_gen(1, 0.5), _reuse(2, 0.0), _gen(3, 0.0, frac_zero=1.0), _reuse(4, 0.0), _gen(5, 0.2)]
    s = learning_signal(rows)
    assert s["trained"] and s["nonzero_grad_steps"] == 2 and s["steps_with_reward_spread"] == 2
    assert s["nonzero_grad_fraction"] == pytest.approx(0.4)
    [w] = s["warnings"]
    assert w.startswith("weak learning signal: only 2 of 5 optimiser steps had a non-zero gradient")
    rows = [_gen(1, 0.5), _reuse(2, 0.5), _gen(3, 0.5), _reuse(4, 0.5), _gen(5, 0.0, frac_zero=1.0)]
    s = learning_signal(rows)  # 4 of 5 = 80%: no warning
    assert s["trained"] and s["nonzero_grad_fraction"] == pytest.approx(0.8) and s["warnings"] == []


def test_rows_read_back_from_the_csv_log():
    """The CSV holds strings, empty where a step has no value; eval-only rows are not optimiser steps."""
    text = ("step,loss,reward_std,frac_reward_zero_std,grad_norm,eval_reward\n"
            "1,0.0,0.0,1.0,0.0,\n2,0.0,,,0.0,\n3,,,,,0.25\n")
    s = learning_signal(list(csv.DictReader(io.StringIO(text))))
    assert s["steps"] == 2 and s["generation_steps"] == 1 and not s["trained"]


def test_no_logged_step_is_flagged_but_not_called_untrained():
    s = learning_signal([])
    assert s["trained"] and s["steps"] == 0 and s["nonzero_grad_fraction"] is None
    assert "learning signal is unchecked" in s["warnings"][0]
