"""Evaluation: generate completions for a benchmark file, grade them, write a per-sample JSONL and a metrics JSON.

* ``evaluate(...)`` (``pspo evaluate``, in ``pspo.cli``): see ``pspo.evaluation.runner``.
* ``metrics_from_samples(path_or_rows)``: every metric, computed from the per-sample rows only.
* ``wilson_interval(successes, n, z)``, ``pass_at_k(n, c, k)``, ``has_repetition_loop(text)``: pure functions.
* Generation: ``pspo.evaluation.backends`` chooses the backend, dtype and batch size (``backend="auto"`` picks vLLM
  only if CUDA and vllm are both available); ``transformers_loop`` (CPU/GPU, batched KV-cache loop) and
  ``vllm_generator`` (vLLM, imported only when chosen) generate; ``sampling`` holds what both share.
"""

from pspo.evaluation.metrics import (
    has_repetition_loop,
    majority_answer,
    metrics_from_samples,
    pass_at_k,
    wilson_interval,
)
from pspo.evaluation.runner import check_settings, evaluate, load_rows, model_fingerprint

__all__ = [
    "evaluate", "metrics_from_samples", "wilson_interval", "pass_at_k", "has_repetition_loop",
    "majority_answer", "model_fingerprint", "load_rows", "check_settings",
]
