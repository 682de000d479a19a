"""``evaluate``: generate, grade, write the per-sample JSONL, then the metrics JSON computed from that file."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from pspo.errors import PSPOError
from pspo.evaluation.backends import BACKENDS, DTYPES, resolve_backend
from pspo.evaluation.metrics import metrics_from_samples
from pspo.evaluation.transformers_loop import TransformersGenerator
from pspo.evaluation.vllm_generator import VLLMGenerator

# Bytes of the weight files read for the model fingerprint: their safetensors header plus FINGERPRINT_CHUNKS
# evenly spaced chunks of FINGERPRINT_CHUNK bytes (about 1 MB in all, whatever the model size).
FINGERPRINT_CHUNKS = 16
FINGERPRINT_CHUNK = 1 << 16
MODEL_META_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "chat_template.jinja")


def model_fingerprint(model_dir: str | os.PathLike) -> dict:
    """A cheap identity of a model directory: sha256 of config/tokenizer files, and per weight file its size and a
    sha256 over its safetensors header and ~1 MB of evenly spaced chunks (checkpoints of one architecture have
    identical headers, the sampled bytes tell them apart). ``sha256`` combines them all."""
    model_dir = Path(model_dir)
    files: dict[str, Any] = {}
    for name in MODEL_META_FILES:
        p = model_dir / name
        if p.is_file():
            files[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(model_dir.iterdir()):
        if not p.is_file() or not (p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")):
            continue
        size = p.stat().st_size
        h = hashlib.sha256()
        with open(p, "rb") as f:
            if p.suffix == ".safetensors" and size >= 8:
                (header_len,) = struct.unpack("<Q", f.read(8))
                h.update(f.read(min(header_len, size - 8)))
            for i in range(FINGERPRINT_CHUNKS):
                f.seek(max(0, (size - FINGERPRINT_CHUNK) * i // max(FINGERPRINT_CHUNKS - 1, 1)))
                h.update(f.read(FINGERPRINT_CHUNK))
        files[p.name] = {"size": size, "sampled_sha256": h.hexdigest()}
    combined = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"path": str(model_dir.resolve()), "sha256": combined, "files": files}


def load_rows(data_file: str | os.PathLike) -> list[dict]:
    """Schema rows (id, question, answer, ...) of an evaluation file; one-line errors for a bad file."""
    from pspo.io import read_jsonl

    rows = read_jsonl(data_file)
    if not rows:
        raise PSPOError(f"{data_file}: benchmark file has no rows; regenerate it with `pspo prepare-data`")
    seen: set[str] = set()
    for i, r in enumerate(rows, start=1):
        missing = [k for k in ("id", "question", "answer") if k not in r]
        if missing:
            raise PSPOError(f"{data_file}: row {i} lacks {', '.join(missing)}; expected the schema of shared/data/README.md")
        if r["id"] in seen:
            raise PSPOError(f"{data_file}: duplicate id {r['id']!r} (row {i})")
        seen.add(r["id"])
    return rows


def check_settings(*, benchmark: str, temperature: float, n_samples: int, top_p: float, max_new_tokens: int,
                   batch_size: int | None, backend: str, dtype: str, threads: int | None = None) -> None:
    from pspo.benchmarks import canonical

    canonical(benchmark)
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise PSPOError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise PSPOError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise PSPOError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if temperature == 0 and n_samples > 1:
        raise PSPOError(f"temperature 0 is greedy and deterministic, so n_samples={n_samples} would repeat one "
                        "completion; use n_samples 1 or a temperature > 0")
    if not (0 < top_p <= 1):
        raise PSPOError(f"top_p must be in (0, 1], got {top_p!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise PSPOError(f"batch_size must be a positive integer, got {batch_size!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise PSPOError(f"threads must be a positive integer, got {threads!r}")
    if backend not in BACKENDS:
        raise PSPOError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise PSPOError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")


def make_generator(backend: str, model_dir: str, *, dtype: str = "auto", seed: int = 0, threads: int | None = None,
                   vllm_enforce_eager: bool | None = None, tensor_parallel_size: int = 1):
    """The generator ``backend`` names (``auto`` resolved by :func:`pspo.evaluation.backends.resolve_backend`)."""
    backend = resolve_backend(backend)
    if backend == "vllm":
        return VLLMGenerator(model_dir, dtype=dtype, seed=seed, threads=threads, enforce_eager=vllm_enforce_eager,
                             tensor_parallel_size=tensor_parallel_size)
    if tensor_parallel_size > 1:
        raise PSPOError(f"tensor_parallel_size {tensor_parallel_size} needs the vllm backend; the {backend} backend "
                        "runs on one device")
    return TransformersGenerator(model_dir, dtype=dtype)


def evaluate(
    *, model_dir: str | os.PathLike, benchmark: str, data_file: str | os.PathLike, out_samples: str | os.PathLike,
    out_metrics: str | os.PathLike, temperature: float = 0.0, n_samples: int = 1, top_p: float = 1.0,
    max_new_tokens: int = 128, backend: str = "auto", dtype: str = "auto", batch_size: int | None = None,
    system_prompt: str | None = None, seed: int = 0, provenance_extra: dict | None = None, progress: bool = True,
    threads: int | None = None, generator: Any = None, overwrite: bool = False, require_gpu: bool = False,
    vllm_enforce_eager: bool | None = None, tensor_parallel_size: int = 1,
) -> dict:
    """Evaluate a model on one benchmark file; write ``out_samples`` (JSONL) and ``out_metrics`` (JSON); return
    the metrics dict.

    Per-sample rows, in input order (then sample order): id, sample (only when n_samples > 1), prompt,
    completion, extracted, gold, correct, formatted, completion_tokens (generated tokens including the stop
    token), finish_reason ("stop" | "length"). The metrics are ``metrics_from_samples`` of the written file plus
    ``throughput``, ``generation`` (the settings) and ``provenance``. Both files are written atomically and
    the metrics file last (the old one is removed first), so a killed run never leaves a metrics file that
    does not belong to the samples next to it. ``threads`` sets torch's CPU threads for this call (None:
    $PSPO_TORCH_THREADS, else torch's default, all cores). ``generator`` (tests, reuse) is an already-built
    backend. An existing ``out_metrics`` made with different settings, model or data is never silently replaced:
    that is an error unless ``overwrite`` (Snakemake removes a job's old outputs itself before it reruns the job).
    ``require_gpu`` refuses to run without CUDA (:func:`pspo.device.job_device`, as training does).
    ``vllm_enforce_eager`` (vLLM only): None is eager on CPU and vLLM's default (compiled, CUDA graphs) on GPUs.
    ``tensor_parallel_size`` (vLLM only): the model split over that many GPUs (workers on a CPU); greedy answers do
    not depend on it.
    """
    from pspo.device import job_device
    from pspo.grading import grade
    from pspo.io import atomic_path
    from pspo.models import check_model_dir
    from pspo.prompts import SYSTEM_PROMPT, render_prompt
    from pspo.provenance import provenance

    if isinstance(temperature, (int, float)):
        temperature = float(temperature)
    check_settings(benchmark=benchmark, temperature=temperature, n_samples=n_samples, top_p=top_p,
                   max_new_tokens=max_new_tokens, batch_size=batch_size, backend=backend, dtype=dtype, threads=threads)
    check_model_dir(model_dir)
    rows = load_rows(data_file)
    if temperature == 0:
        top_p = 1.0  # irrelevant for greedy; recorded as 1.0 so equal runs have equal settings
    if not overwrite:
        _refuse_overwriting_other_results(
            Path(out_metrics), model_dir=model_dir, data_file=data_file,
            requested={"benchmark": benchmark, "temperature": temperature, "n_samples": n_samples, "top_p": top_p,
                       "max_new_tokens": max_new_tokens, "seed": seed,
                       "system_prompt": SYSTEM_PROMPT if system_prompt is None else system_prompt},
        )

    extra = provenance_extra or {}
    name = "/".join(str(extra[k]) for k in ("model", "tag") if extra.get(k)) or Path(model_dir).name
    with job_device(model=name, require_gpu=require_gpu, threads=threads) as used_threads:
        gen = generator or make_generator(backend, str(model_dir), dtype=dtype, seed=seed, threads=used_threads,
                                          vllm_enforce_eager=vllm_enforce_eager,
                                          tensor_parallel_size=tensor_parallel_size)
        try:
            prompts = [render_prompt(gen.tokenizer, r["question"], system_prompt) for r in rows]
            outputs = gen.generate(
                prompts, n=n_samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                seed=seed, batch_size=batch_size, progress=progress,
                prefix_hint=render_prompt(gen.tokenizer, "", system_prompt),
            )
        finally:
            if generator is None:  # built here: its engine (vLLM's process and KV cache) ends with the call
                getattr(gen, "close", lambda: None)()

    samples = []
    for row, prompt, outs in zip(rows, prompts, outputs):
        gold = str(row["answer"])
        for s, c in enumerate(outs):
            g = grade(benchmark, c.text, gold)
            rec: dict[str, Any] = {"id": row["id"]}
            if n_samples > 1:
                rec["sample"] = s
            rec.update(prompt=prompt, completion=c.text, extracted=g.extracted, gold=gold, correct=bool(g.correct),
                       formatted=bool(g.formatted), completion_tokens=len(c.token_ids), finish_reason=c.finish_reason)
            samples.append(rec)

    if all(not s["completion"].strip() for s in samples):
        raise PSPOError(
            f"every completion of {model_dir} on {benchmark} is empty (the model stops at once): check that the "
            "model's EOS token and chat template match its training; nothing was written"
        )
    stats = dict(getattr(gen, "last_stats", {}) or {})
    settings = {
        "benchmark": benchmark, "temperature": temperature, "n_samples": n_samples, "top_p": top_p,
        "max_new_tokens": max_new_tokens, "seed": seed, "backend": gen.name, "dtype": gen.dtype,
        "device": gen.device, "batch_size": batch_size,
        "system_prompt": SYSTEM_PROMPT if system_prompt is None else system_prompt,
    }
    out_samples, out_metrics = Path(out_samples), Path(out_metrics)
    # metrics outermost: the samples file is renamed into place first, then the metrics file
    with atomic_path(out_metrics) as tmp_metrics, atomic_path(out_samples) as tmp_samples:
        with open(tmp_samples, "w", encoding="utf-8") as f:
            for rec in samples:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        metrics = metrics_from_samples(tmp_samples)
        metrics["benchmark"] = benchmark
        metrics["throughput"] = {
            "completion_tokens": stats.get("completion_tokens"), "prefill_tokens": stats.get("prefill_tokens"),
            "generation_seconds": stats.get("seconds"), "prefill_seconds": stats.get("prefill_seconds"),
            "decode_forward_seconds": stats.get("decode_forward_seconds"),
            "decode_forward_rows": stats.get("decode_forward_rows"), "tokens_per_second": stats.get("tokens_per_second"),
        }
        metrics["generation"] = settings
        metrics["samples_file"] = {"name": out_samples.name, "sha256": _sha256(tmp_samples)}
        metrics["provenance"] = provenance(
            config=settings, data_files=[data_file], model_fingerprint=model_fingerprint(model_dir),
            torch_threads=used_threads, tensor_parallel_size=tensor_parallel_size, **(provenance_extra or {}),
        )
        tmp_metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                               encoding="utf-8")
        out_metrics.unlink(missing_ok=True)  # an old metrics file must not outlive its samples file
    return metrics


def _refuse_overwriting_other_results(out_metrics: Path, *, model_dir, data_file, requested: dict) -> None:
    """One line, and nothing touched, when ``out_metrics`` holds results of another configuration."""
    if not out_metrics.is_file():
        return
    try:
        old = json.loads(out_metrics.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return  # not a metrics file we wrote: the atomic write replaces it
    from pspo.provenance import file_sha256

    differences = [f"{k}: {old.get('generation', {}).get(k)!r} -> {v!r}" for k, v in requested.items()
                   if old.get("generation", {}).get(k) != v]
    old_prov = old.get("provenance", {})
    if old_prov.get("model_fingerprint", {}).get("sha256") not in (None, model_fingerprint(model_dir)["sha256"]):
        differences.append(f"model: {model_dir} is not the model that produced it")
    if old_prov.get("data_sha256", {}).get(Path(data_file).name) not in (None, file_sha256(data_file)):
        differences.append(f"data: {Path(data_file).name} changed")
    if differences:
        raise PSPOError(
            f"{out_metrics} holds results of a different configuration ({'; '.join(differences)}); "
            "choose another output path, or pass --overwrite to replace them"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
