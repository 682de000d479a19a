"""`pspo preflight` in its CPU form on a grid that generates with transformers (config/ci.yaml); the vLLM form runs
in the miniature paper grid (tests/test_workflow.py) and its sync check's failure in tests/test_vllm.py."""

from __future__ import annotations

import json

import pytest
import yaml

from pspo.cli import run as pspo
from pspo.errors import PSPOError

from conftest import REPO


def test_preflight_cpu_form_reports_ready(smollm2_dir, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "ready.json"
    assert pspo(["preflight", "--configfile", str(REPO / "config" / "ci.yaml"), "--tokenizer", str(smollm2_dir),
                 "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == "ready" and any(line.startswith("driver ") for line in printed)
    report = json.loads(out.read_text())
    assert report["status"] == "ready" and report["versions"]["trl"] == "1.16.0"
    assert report["training"] == {**report["training"], "steps": 2, "generation": "transformers"}
    assert "sync" not in report["training"]  # no vLLM in this grid's training
    assert report["evaluation"]["backend"] == "transformers" and report["evaluation"]["samples_per_prompt"] == 2


def test_preflight_of_an_unprepared_packaged_model_says_how(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    cfg["results_dir"] = str(tmp_path / "results")
    (tmp_path / "ci.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(PSPOError, match=r"model smollm2-135m is not prepared .*--until prepare_model.*--tokenizer"):
        pspo(["preflight", "--configfile", str(tmp_path / "ci.yaml")])
