"""The CPU stand-in task (pspo.arith), data.source auto, and per-benchmark evaluation limits."""

from __future__ import annotations

import json

import pytest

from pspo import arith, config as C, data
from pspo.errors import PSPOError
from pspo.grading import grade
from pspo.rewards import score_completion

from conftest import REPO


def test_rows_are_deterministic_and_follow_the_schema():
    a, b = arith.rows("arith_train"), arith.rows("arith_train")
    assert a == b and len(a) == arith.POOLS["arith_train"]
    assert data._validate_rows(a, "arith_train") is a
    assert a[0]["id"] == "arith_train/0" and a[0]["meta"]["stand_in"] is True
    assert {r["meta"]["template"] for r in a} == {0, 1, 2, 3}


def test_gold_solutions_earn_full_reward_and_a_wrong_value_does_not():
    for r in arith.rows("arith_train")[:300] + arith.rows("arith")[:300]:
        assert score_completion(r["solution"], r["answer"]) == 1.0
        assert grade("arith", r["solution"], r["answer"]).correct
        wrong = f"#### {int(r['answer']) + 1}"
        assert score_completion(wrong, r["answer"]) == pytest.approx(0.05)
        assert int(r["answer"]) >= 0


def test_no_evaluated_question_is_in_the_training_pool():
    train = {r["question"] for r in arith.rows("arith_train")}
    test = arith.rows("arith")
    assert len(test) == arith.POOLS["arith"] and not train & {r["question"] for r in test}
    assert len({r["question"] for r in test}) == len(test)


def test_train_split_of_the_stand_in_is_seeded_and_recorded(tmp_path):
    kw = dict(train_size=3800, val_size=100, train_limit=8, train_set="arith")
    data.write_train_split(seed=0, out_train=tmp_path / "t.jsonl", out_val=tmp_path / "v.jsonl", **kw)
    data.write_train_split(seed=1, out_train=tmp_path / "t1.jsonl", out_val=tmp_path / "v1.jsonl", **kw)
    t0 = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    t1 = [json.loads(x) for x in (tmp_path / "t1.jsonl").read_text().splitlines()]
    assert len(t0) == 8 and all(r["id"].startswith("arith_train/") for r in t0) and t0 != t1
    meta = json.loads((tmp_path / "t.meta.json").read_text())
    assert meta["train_set"] == "arith" and meta["source"] == "generated" and meta["benchmark"] == "arith_train"


def test_unknown_train_set_is_one_line(tmp_path):
    with pytest.raises(PSPOError, match="unknown train set 'mawps'; valid: gsm8k, arith"):
        data.write_train_split(seed=0, out_train=tmp_path / "t", out_val=tmp_path / "v", train_set="mawps")


def test_stand_in_eval_rows_need_no_data_directory(tmp_path):
    data.write_eval_rows(out=tmp_path / "arith.jsonl", benchmark="arith", dir=tmp_path / "nowhere", limit=10)
    rows = [json.loads(x) for x in (tmp_path / "arith.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(r["id"].startswith("arith/") for r in rows)


def test_source_auto_prefers_an_existing_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("PSPO_DATA_DIR", raising=False)
    assert data.resolve_source("auto", tmp_path) == ("local", str(tmp_path))
    assert data.resolve_source("auto", tmp_path / "missing") == ("hub", str(tmp_path / "missing"))
    monkeypatch.setenv("PSPO_DATA_DIR", str(tmp_path))
    assert data.resolve_source("auto", tmp_path / "missing") == ("local", str(tmp_path))
    assert data.resolve_source("local", tmp_path / "missing") == ("local", str(tmp_path / "missing"))
    assert data.resolve_source("hub", None) == ("hub", None)


def test_auto_is_the_default_source_and_eval_limits_override_per_benchmark():
    cfg = C.load_config({"models": {"m": {"source": "hub", "path": "org/m"}}, "runs": {"p": {"objective": "pspo"}},
                         "seeds": [0], "data": {"eval_limit": 16, "eval_limits": {"arith": 64}}})
    assert cfg["data"]["source"] == "auto" and cfg["data"]["train_set"] == "gsm8k"
    assert C.eval_data_settings(cfg, "arith")["limit"] == 64
    assert C.eval_data_settings(cfg, "gsm8k")["limit"] == 16
    with pytest.raises(PSPOError, match="eval_limits"):
        C.load_config({"models": {"m": {"source": "hub", "path": "org/m"}}, "runs": {"p": {"objective": "pspo"}},
                       "seeds": [0], "data": {"eval_limits": {"mawps": 3}}})


def test_cpu_grid_deletes_trained_weights_once_evaluated():
    cfg = C.load_config(REPO / "config" / "cpu.yaml")
    assert cfg["training"]["keep_models"] is False
    assert C.load_config(REPO / "config" / "config.yaml")["training"]["keep_models"] is True
