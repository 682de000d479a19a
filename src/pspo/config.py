"""The workflow config: JSON-schema validation with defaults, one-line errors, the merged GRPO settings of a
(model, run), and the settings each rule depends on.

The Snakefile calls :func:`load_config` once. Which jobs a config implies is :mod:`pspo.grid`; where each job's
files go is :mod:`pspo.layout`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from pspo.errors import PSPOError

# The workflow's schema (workflow/schemas/config.schema.yaml), shipped in the package through the link beside this
# module, so an installed pspo validates configs as the workflow does.
SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@functools.lru_cache(maxsize=4)
def _schema(schema_path: str | Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(Path(schema_path).read_text())


def schema_default(*keys: str) -> Any:
    """The schema's default of a config key (``schema_default("training", "keep_checkpoints")``): the one place a
    default is defined, read by the package functions that have the same setting."""
    node = _schema()
    for key in keys:
        node = node["properties"][key]
    return copy.deepcopy(node["default"])


def _extend_with_defaults(validator_class):
    """A validator that fills in schema defaults while it validates (the jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(Draft202012Validator)


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _error_line(error, schema: dict) -> str:
    where = _where(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        key = extra[0] if extra else "?"
        hint = difflib.get_close_matches(key, allowed, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"valid keys: {', '.join(allowed)}"
        return f"config: unknown key {key!r} in {where}; {fix}"
    if error.validator == "enum":
        return f"config: {where} = {error.instance!r} is not valid; choose one of {error.validator_value}"
    if error.validator == "required":
        return f"config: {where}: {error.message}"
    return f"config: {where}: {error.message}"


_SCALAR_RE = re.compile(r"^(?:[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|true|false|True|False|null)$")
_JSON_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}


def _scalar(text: str):
    """A command-line string as the YAML scalar it spells (Snakemake's --config leaves nested values as strings)."""
    if not _SCALAR_RE.match(text):
        return text
    value = yaml.safe_load(text)
    return float(text) if isinstance(value, str) else value  # PyYAML reads "1e-6" as a string


def _set_in(config, path, value) -> None:
    *parents, last = path
    for key in parents:
        config = config[key]
    config[last] = value


def _coerce_command_line_strings(config: dict, validator) -> None:
    """Turn strings such as '4' into numbers where the schema wants one, and inside the free-form GRPO settings."""
    for _ in range(100):
        fixable = []
        for error in validator.iter_errors(config):
            expected = error.validator_value if error.validator == "type" else None
            if isinstance(error.instance, str) and expected is not None:
                value = _scalar(error.instance)
                wanted = tuple(t for name in ([expected] if isinstance(expected, str) else expected)
                               for t in ([_JSON_TYPES[name]] if name in _JSON_TYPES else []))
                if value is not error.instance and wanted and isinstance(value, wanted):
                    fixable.append((list(error.absolute_path), value))
        if not fixable:
            break
        for path, value in fixable:
            _set_in(config, path, value)
    grpo_dicts = [config.get("training", {}).get("grpo")]
    grpo_dicts += [run.get("grpo") for run in (config.get("runs") or {}).values() if isinstance(run, dict)]
    grpo_dicts += [hp for model in (config.get("models") or {}).values() if isinstance(model, dict)
                   for hp in (model.get("hyperparameters") or {}).values()]
    for settings in grpo_dicts:
        if isinstance(settings, dict):
            for key, value in settings.items():
                if isinstance(value, str):
                    settings[key] = _scalar(value)


def validate(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Return a validated deep copy of ``config`` with every default filled in; raise PSPOError on the first problem."""
    schema = copy.deepcopy(_schema(schema_path))
    config = copy.deepcopy(config) if config is not None else {}
    validator = _DefaultFillingValidator(schema)
    # Fill defaults for $ref'd sub-objects (resources) that the generic recipe cannot see through $ref.
    for model in (config.get("models") or {}).values():
        if isinstance(model, dict):
            for key in ("train_resources", "eval_resources"):
                model.setdefault(key, {})
    _coerce_command_line_strings(config, validator)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise PSPOError(_error_line(errors[0], schema))
    _check_semantics(config)
    return config


GRPO_FIELDS_PATH = Path(__file__).with_name("grpo_config_fields.txt")
# Keys the workflow sets itself (objective, alpha, seed) or that PSPOConfig adds to TRL's GRPOConfig.
MANAGED_GRPO_KEYS = ("objective", "smoothing_alpha", "seed", "output_dir")
# PSPOConfig's own settings beside GRPOConfig's (pspo.trainer.PSPOConfig), allowed in the grpo blocks.
PSPO_GRPO_KEYS = ("vllm_dtype",)


def grpo_config_fields() -> frozenset[str]:
    """GRPOConfig's field names, read from a list shipped with the package (importing TRL here takes seconds)."""
    lines = GRPO_FIELDS_PATH.read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _check_grpo_keys(where: str, settings: dict) -> None:
    fields = grpo_config_fields() | set(PSPO_GRPO_KEYS)
    for key in settings:
        if key in MANAGED_GRPO_KEYS:
            raise PSPOError(f"config: {where}.{key} is set by the workflow (objective, alphas, seeds); remove it")
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else "see trl.GRPOConfig for the valid names"
            raise PSPOError(f"config: unknown GRPO setting {key!r} in {where}; {fix}")


def _check_vllm_sampling(where: str, grpo: dict) -> None:
    """vLLM-generated training at top_p < 1 with TRL's importance-sampling correction optimises another objective:
    TRL divides by vLLM's log-probs after top-p renormalisation, so each completion is weighted by its tokens'
    nucleus mass (docs/gpu-path.md, measured in docs/results.md)."""
    top_p = grpo.get("top_p", 1.0)
    if grpo.get("use_vllm") and top_p < 1.0 and grpo.get("vllm_importance_sampling_correction", True):
        raise PSPOError(
            f"config: {where}: use_vllm with top_p {top_p} and TRL's vllm_importance_sampling_correction (on by "
            "default) weights every completion by its nucleus mass, not by the vLLM-vs-trainer mismatch; set "
            "training.grpo.vllm_importance_sampling_correction: false (the paper's objective) or top_p: 1.0")


def train_processes(cfg: dict, model: str) -> int:
    """The data-parallel ranks of one training run of ``model``, over all its nodes: per node ``processes``, else
    one per GPU, else 1."""
    res = cfg["models"][model]["train_resources"]
    return (res["processes"] or max(res["gpus"], 1)) * res["nodes"]


def _check_training_processes(cfg: dict, model_name: str) -> None:
    res, where = cfg["models"][model_name]["train_resources"], f"config: models.{model_name}.train_resources"
    processes = train_processes(cfg, model_name)
    if res["gpus"] > 0 and res["processes"] not in (None, res["gpus"]):
        raise PSPOError(f"{where}: processes {res['processes']} with gpus {res['gpus']}: a run has one rank per "
                        "GPU; leave processes null or set it equal to gpus")
    if res["accelerate_config"] is not None and res["gpus"] < 2:
        raise PSPOError(f"{where}: accelerate_config {res['accelerate_config']!r} shards training over GPUs; it "
                        "needs gpus >= 2 (or set it null)")
    if processes == 1:
        return
    selected = cfg["models"][model_name]["runs"]
    for run in cfg["runs"] if selected is None else selected:
        grpo = merged_grpo(cfg, model_name, run)
        for key in ("gradient_accumulation_steps", "steps_per_generation"):
            value = grpo.get(key, 1 if key == "gradient_accumulation_steps" else None)
            if value is not None and value % processes:
                raise PSPOError(
                    f"{where}: {processes} processes, but run {run}'s {key} {value} does not divide by {processes}, "
                    "so the global batch (per_device_train_batch_size x gradient_accumulation_steps) cannot stay the "
                    f"same; make {key} a multiple of {processes}")


def _check_semantics(cfg: dict) -> None:
    runs = cfg["runs"]
    _check_grpo_keys("training.grpo", cfg["training"]["grpo"])
    for name, run in runs.items():
        _check_grpo_keys(f"runs.{name}.grpo", run["grpo"])
    for name, model in cfg["models"].items():
        for run, settings in model["hyperparameters"].items():
            _check_grpo_keys(f"models.{name}.hyperparameters.{run}", settings)
    for model_name in cfg["models"]:
        for name in runs:
            _check_vllm_sampling(f"models.{model_name}, run {name}", merged_grpo(cfg, model_name, name))
    for name in runs:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", name):
            raise PSPOError(f"config: run name {name!r} may use only letters, digits, '.' and '-'")
    for model_name, model in cfg["models"].items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model_name):
            raise PSPOError(f"config: model name {model_name!r} may use only letters, digits, '.', '_' and '-'")
        for run in model["runs"] or []:
            if run not in runs:
                raise PSPOError(f"config: models.{model_name}.runs names unknown run {run!r}; defined runs: {', '.join(runs)}")
        for run in model["hyperparameters"]:
            if run not in runs:
                raise PSPOError(
                    f"config: models.{model_name}.hyperparameters has unknown run {run!r}; defined runs: {', '.join(runs)}"
                )
        if model["eval_resources"]["gpus"] > 1 and cfg["evaluation"]["backend"] == "transformers":
            raise PSPOError(
                f"config: models.{model_name}.eval_resources.gpus is {model['eval_resources']['gpus']}, but the "
                "transformers backend runs on one GPU, so the others would be reserved and idle; set gpus: 1, or "
                "evaluation.backend: vllm (tensor parallel over the job's GPUs)")
        _check_training_processes(cfg, model_name)
        if model["source"] in ("hub", "local") and not model["path"]:
            raise PSPOError(f"config: models.{model_name}.path is required for source {model['source']!r}")
        if model["source"] == "gguf_package" and not (model["package"] and model["gguf_file"]):
            raise PSPOError(f"config: models.{model_name} with source gguf_package needs `package` and `gguf_file`")
    if cfg["main_alpha"] not in cfg["alphas"] and any(r["objective"] == "pspo" for r in runs.values()):
        raise PSPOError(f"config: main_alpha {cfg['main_alpha']} is not one of alphas {cfg['alphas']}; add it to `alphas`")
    for run in cfg["evaluation"]["sampled"]["runs"]:
        if run not in runs:
            raise PSPOError(f"config: evaluation.sampled.runs names unknown run {run!r}; defined runs: {', '.join(runs)}")
    if len(set(cfg["seeds"])) != len(cfg["seeds"]):
        raise PSPOError(f"config: seeds {cfg['seeds']} has duplicates")


def merged_grpo(cfg: dict, model: str, run: str) -> dict[str, Any]:
    """The GRPO fields of one (model, run): shared training.grpo < runs.<run>.grpo < models.<m>.hyperparameters.<run>.

    Only GRPOConfig fields: a job's objective, alpha and seed are its own, and the schema refuses them here
    (MANAGED_GRPO_KEYS)."""
    settings = dict(cfg["training"]["grpo"])
    settings.update(cfg["runs"][run]["grpo"])
    settings.update(cfg["models"][model]["hyperparameters"].get(run, {}))
    return settings


def run_label(cfg: dict, run: str, alpha: float | None = None) -> str:
    label = cfg["runs"][run].get("label") or run
    return label if alpha is None else f"{label} (α={alpha:g})"


def load_config(path_or_dict: str | Path | dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise PSPOError(f"config file {path} not found")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise PSPOError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return validate(raw, schema_path)


# --- what each job depends on -------------------------------------------------------------------------------------
# Snakemake reruns a job when its params change, so each rule gets only the settings it depends on: changing one
# config value reruns only the jobs that use it.

def split_settings(cfg: dict) -> dict:
    d = cfg["data"]
    return {k: d[k] for k in ("source", "dir", "train_size", "val_size", "train_limit", "train_set")}


def eval_data_settings(cfg: dict, benchmark: str) -> dict:
    d = cfg["data"]
    subset = {"asdiv": d["asdiv_subset"], "svamp": d["svamp_subset"]}.get(benchmark, "all")
    return {"source": d["source"], "dir": d["dir"], "benchmark": benchmark, "subset": subset,
            "limit": d["eval_limits"].get(benchmark, d["eval_limit"]), "seed": d["eval_seed"]}


def report_settings(cfg: dict) -> dict:
    """The config sections the report reads (the job grid, labels, GRPO settings for the hyperparameter table)."""
    keys = ("results_dir", "description", "models", "runs", "alphas", "main_alpha", "seeds", "evaluation")
    return {**{k: cfg[k] for k in keys}, "training": {"grpo": cfg["training"]["grpo"]}}


def preflight_settings(cfg: dict) -> dict:
    """What ``pspo preflight`` checks for this grid: its shared GRPO settings (how training generates), its evaluation
    backend and dtype, and whether it needs a GPU (any model's training or evaluation does)."""
    gpus = [m[kind]["gpus"] for m in cfg["models"].values() for kind in ("train_resources", "eval_resources")]
    return {"grpo": dict(cfg["training"]["grpo"]),
            "generation": {k: cfg["evaluation"][k] for k in ("backend", "dtype")},
            "require_gpu": max(gpus) > 0}


def generation_settings(cfg: dict, temperature: float, n_samples: int) -> dict:
    ev = cfg["evaluation"]
    out = {k: ev[k] for k in ("max_new_tokens", "backend", "dtype", "batch_size", "vllm_enforce_eager")}
    out.update(temperature=temperature, n_samples=n_samples, top_p=ev["sampled"]["top_p"] if temperature > 0 else 1.0)
    return out
