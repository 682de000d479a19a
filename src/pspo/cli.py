"""The ``pspo`` command: one subcommand per stage, each a thin wrapper over a package function.

Every subcommand module exposes ``main(argv) -> int``. A PSPOError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

from pspo.errors import PSPOError

SUBCOMMANDS = {
    "grade": ("pspo.grading", "re-grade a JSONL of {id, completion} rows against a benchmark's gold answers"),
    "evaluate": ("pspo.evaluation", "evaluate a model on a benchmark: per-sample JSONL + metrics JSON"),
    "train": ("pspo.train", "train one (model, objective, alpha, seed) run with GRPO and the chosen objective"),
    "prepare-model": ("pspo.models", "fetch a hub model or convert the packaged GGUF model to an HF checkpoint"),
    "prepare-data": ("pspo.data", "write the train/validation split and the evaluation subsets as JSONL"),
    "report": ("pspo.report", "build the tables and figures from the metrics files"),
}


def _usage() -> str:
    lines = ["usage: pspo COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"pspo: unknown command {name!r}; valid: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except PSPOError as e:
        print(f"pspo {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
