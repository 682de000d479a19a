"""README's configs table holds what `snakemake -n` plans for each shipped config."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pspo import miniature

from conftest import REPO


def _table_counts() -> dict[str, int]:
    """{first cell: job count} for the rows of README's "Configs" table that give a count."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configs\n", 1)[1].split("\n## ", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^\| `([^`]+)` \|.*\| (\d+) \|$", section, flags=re.M)}


def test_the_table_lists_every_shipped_config():
    shipped = {f"config/{p.name}" for p in (REPO / "config").glob("*.yaml") if not p.name.endswith(".schema.yaml")}
    assert shipped <= set(_table_counts()), shipped - set(_table_counts())


@pytest.mark.parametrize("row", sorted(_table_counts()))
def test_readme_job_count_is_what_snakemake_plans(row, tmp_path, data_dir):
    config = REPO / row if row.startswith("config/") else miniature.write(
        tmp_path / "mini.yaml", data_dir=str(data_dir), results_dir=str(tmp_path / "results"))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(config),
                           "--config", f"results_dir={tmp_path / 'results'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    planned = re.search(r"^total\s+(\d+)$", proc.stdout, flags=re.M)
    assert planned, proc.stdout[-2000:]
    assert int(planned[1]) == _table_counts()[row], f"README says {_table_counts()[row]} jobs for {row}"


def test_the_paper_grid_section_says_the_tables_count():
    said = re.search(r"`snakemake -n` lists\s+its (\d+) jobs", (REPO / "README.md").read_text())
    assert said and int(said[1]) == _table_counts()["config/config.yaml"]


# Where docs point to each other: README sections by name, and files by path.
DOC_FILES = ["README.md", "ARCHITECTURE.md", "config/README.md", "benchmarks/README.md", *sorted(
    str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
REFERRING = DOC_FILES + sorted(str(p.relative_to(REPO)) for pattern in (
    "config/*.yaml", "src/pspo/**/*.py", "tests/*.py", "benchmarks/*.py", "workflow/**/*.smk", "workflow/scripts/*.py")
    for p in REPO.glob(pattern))
# a repository path as the docs and comments write it (a directory, a glob or a placeholder is not checked)
PATH = re.compile(r"(?<![\w./-])((?:docs|config|benchmarks|tests|workflow|src/pspo|envs|slurm|profiles)/[\w./-]+"
                  r"\.(?:md|py|yaml|yml|smk|csv|sh)|(?:ARCHITECTURE|README)\.md)(?![\w/])")


def _readme_sections() -> set[str]:
    return {m[1].strip() for m in re.finditer(r"^#{2,3} (.+)$", (REPO / "README.md").read_text(), flags=re.M)}


@pytest.mark.parametrize("name", REFERRING)
def test_every_readme_section_and_file_named_exists(name):
    text = (REPO / name).read_text(encoding="utf-8")
    sections = _readme_sections()
    for said in re.findall(r"README(?:'s)?\s+\"([^\"]+)\"", text):
        assert said in sections, f"{name} names README section {said!r}; README has {sorted(sections)}"
    for path in set(PATH.findall(text)):
        assert (REPO / path).exists(), f"{name} names {path}, which does not exist"


def test_the_readme_is_a_users_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 210, f"README.md has {len(lines)} lines; measured results go to docs/results.md"
    assert {"Install and quick start (CPU)", "Tests", "Configs", "Results layout", "Where the rest is"} <= _readme_sections()
