"""`pip install .` (not editable) gives a package that works outside the checkout: README's trainer snippet trains,
and the installed package validates configs with the workflow's own schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built and installed from this checkout into a directory of its own (no editable link)."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(target.glob("__editable__*")) and (target / "pspo" / "trainer.py").is_file()
    return target


def _run(code: str, site, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))  # first on sys.path: ahead of the checkout's editable install
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def _readme_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    snippet = [b for b in blocks if "PSPOTrainer(" in b and "PSPOConfig(" in b]
    assert len(snippet) == 1, "README.md has one python block with the trainer snippet"
    return snippet[0]


def test_the_installed_package_is_not_the_checkout(installed, tmp_path):
    proc = _run("import pspo.trainer as t; print(t.__file__)", installed, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith(str(installed)), proc.stdout


def test_readme_trainer_snippet_runs_from_a_plain_install(installed, tiny_model_dir, tmp_path):
    snippet = _readme_snippet()
    # The snippet as README gives it, on the offline test model, for one small optimiser step on the CPU.
    for given, here in (('model="Qwen/Qwen2.5-0.5B"', f"model={str(tiny_model_dir)!r}"),
                        ("gradient_accumulation_steps=16", "gradient_accumulation_steps=2"),
                        ("max_completion_length=128", "max_completion_length=16")):
        assert given in snippet, given
        snippet = snippet.replace(given, here)
    snippet = snippet.replace("args = PSPOConfig(", "args = PSPOConfig(max_steps=1, use_cpu=True, bf16=False, "
                                                    "report_to=[], save_strategy='no', disable_tqdm=True, ", 1)
    prelude = textwrap.dedent("""
        from datasets import Dataset

        def my_reward(completions, **kwargs):
            return [len(c[0]["content"] if isinstance(c, list) else c) / 50.0 for c in completions]

        ds = Dataset.from_dict({"prompt": [f"What is {i} + {i}?" for i in range(64)]})
    """)
    epilogue = textwrap.dedent("""
        import pspo
        assert trainer.state.global_step == 1, trainer.state.global_step
        print("trained from", pspo.__file__, "objective", trainer.args.objective)
    """)
    proc = _run(prelude + snippet + epilogue, installed, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"trained from {installed}" in proc.stdout and "objective pspo" in proc.stdout


def test_the_installed_package_has_its_data_files(installed, tmp_path):
    code = textwrap.dedent("""
        from pspo import config
        cfg = config.load_config({"models": {"m": {"source": "hub", "path": "org/m"}}, "runs": {"p": {"objective": "pspo"}},
                                  "seeds": [0]})
        from pspo.report.tables import reported
        print(config.SCHEMA_PATH.is_file(), cfg["main_alpha"], len(reported()))
    """)
    proc = _run(code, installed, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "0.1", "6"]  # the schema and the paper's numbers are shipped
    shipped = installed / "pspo" / "config.schema.yaml"
    assert not shipped.is_symlink() and shipped.read_text() == (REPO / "workflow/schemas/config.schema.yaml").read_text()
