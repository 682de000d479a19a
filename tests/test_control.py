"""GR-PSPO against its control (GRPO-noclip at mu = 2): pairs, weight distances, reward agreement."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO
from pspo import config as C
from pspo import grid as G
from pspo import weights
from pspo.errors import PSPOError
from pspo.report import control
from pspo.report import plan as P


def test_every_pspo_run_is_paired_with_the_mu2_noclip_run_of_its_seed():
    cfg = C.load_config(REPO / "config" / "cpu-study.yaml")
    pairs = G.control_pairs(cfg)
    assert len(pairs) == 2 * 3  # alphas x seeds
    for job, ctrl in pairs:
        assert cfg["runs"][job.run]["objective"] == "pspo" and ctrl.run_id == "noclip-mu2" and ctrl.seed == job.seed
    assert P.CONTROL_TABLE in P.table_names(cfg) and P.CONTROL_FIGURE in P.figure_names(cfg)


def test_a_grid_without_the_control_has_no_comparison():
    cfg = C.load_config(REPO / "config" / "cpu.yaml")  # clip, noclip (mu = 1), pspo
    assert G.control_run(cfg, "smollm2-135m") is None and G.control_pairs(cfg) == []
    assert P.CONTROL_TABLE not in P.table_names(cfg) and P.CONTROL_FIGURE not in P.figure_names(cfg)


def _model(path, tensors):
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"))
    return path


def test_weight_distances_against_hand_computed_norms(tmp_path):
    base = {"w": torch.tensor([3.0, 4.0]), "b": torch.zeros(2)}           # ||theta_0|| = 5
    a = {"w": torch.tensor([3.0, 5.0]), "b": torch.zeros(2)}              # moved by 1
    c = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 1.0])}    # moved by 1, another direction
    d = weights.weight_distances(_model(tmp_path / "a", a), _model(tmp_path / "c", c), _model(tmp_path / "0", base))
    assert d["pspo_base"] == pytest.approx(0.2) and d["control_base"] == pytest.approx(0.2)
    assert d["pspo_control"] == pytest.approx(math.sqrt(2) / 5)
    assert d["drift_ratio"] == pytest.approx(math.sqrt(2))
    same = weights.weight_distances(tmp_path / "a", tmp_path / "a", tmp_path / "0")
    assert same["pspo_control"] == 0 and same["drift_ratio"] == 0


def test_a_directory_without_weights_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PSPOError, match="no .safetensors weights"):
        weights.load_weights(tmp_path / "empty")


def test_reward_agreement_finds_where_the_runs_part():
    a = pd.DataFrame({"step": [1, 2, 3, 4, 5], "reward": [0.1, None, 0.2, None, 0.5]})
    b = pd.DataFrame({"step": [1, 2, 3, 4, 5], "reward": [0.1, None, 0.2, None, 0.3]})
    r = control.reward_agreement(a, b)
    assert r["steps_compared"] == 3 and r["first_differing_step"] == 5
    assert r["mean_abs_reward_diff"] == pytest.approx(0.2 / 3)
    assert control.reward_agreement(a, a)["first_differing_step"] is None
