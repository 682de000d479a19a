"""The transformers backend: a batched decoding loop over the HF model's forward, on CPU or GPU.

A KV cache with left padding; prompts sorted by length and prefilled in length buckets (a prefix shared by every
prompt prefilled once); preallocated KV layers, read in place by the decode attention; finished rows dropped from the
batch and padding columns trimmed; stop at EOS per row. Greedy (T=0) is argmax and deterministic; sampling draws
batch-invariant uniforms (:mod:`pspo.evaluation.sampling`). Each completion holds the generated token IDs (up to and
including the stop token, nothing after it), the decoded text (special tokens skipped) and ``finish_reason``
("stop" | "length").
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from pspo.evaluation import backends
from pspo.evaluation.sampling import (
    Completion,
    encode_prompts,
    progress_bar,
    sample_tokens,
    shared_prefix_length,
    stop_token_ids,
    uniform,
)

# Prefill micro-batches hold at most this many (padded) prompt tokens; big enough for efficient matmuls, small
# enough that length-sorted prompts are padded little.
PREFILL_TOKENS = 2048
# When the rows still running all start with at least this many padding columns, those columns are cut from the
# KV cache (they only cost attention time).
TRIM_MIN_COLUMNS = 16
# Finished rows leave the decode batch once the decode steps they have wasted add up to this many (a copy of the
# whole KV cache, which dropping them costs, is worth roughly this fraction of a decode step on CPU).
COMPACT_AFTER_STEPS = 0.5


GROUPED_DECODE_ATTENTION = "pspo_grouped_decode"  # the attention implementation the loop sets on sdpa models


def _grouped_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' sdpa attention, except for one new token per row over grouped KV heads (GQA): there the query
    heads that share a KV head become that head's queries, ``(b, kv_heads, groups, d)``, so the KV cache is read in
    place. transformers' sdpa copies every layer's cache ``groups`` times whenever a padding mask is given (on CPU
    and CUDA), which made a padded decode step 3-5x slower than an unpadded one. The same attention, regrouped:

        out[b, kv * groups + g] = softmax(q[b, kv * groups + g] . K[b, kv]^T * scale + mask[b]) . V[b, kv]
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, q_len, d = query.shape
    if q_len != 1 or groups == 1 or kwargs.get("position_bias") is not None or kwargs.get("cache") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    import torch

    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(b, heads // groups, groups, d), key, value, attn_mask=attention_mask, dropout_p=dropout,
        scale=scaling)
    return out.reshape(b, 1, heads, value.shape[-1]), None


def _use_grouped_decode_attention(model) -> None:
    """Switch a model loaded with sdpa attention to :func:`_grouped_decode_attention` (sdpa's masks)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register(GROUPED_DECODE_ATTENTION, _grouped_decode_attention)
    AttentionMaskInterface.register(GROUPED_DECODE_ATTENTION, sdpa_mask)
    model.set_attn_implementation(GROUPED_DECODE_ATTENTION)


def _prealloc_layer_class():
    """A DynamicLayer that writes into a preallocated buffer instead of re-concatenating the whole cache at every
    step (``torch.cat`` of the full KV cache per token was a third of the CPU decode time)."""
    from transformers.cache_utils import DynamicLayer

    class PreallocLayer(DynamicLayer):
        def __init__(self, reserve: int = 0):
            super().__init__()
            self.reserve = reserve
            self._k = self._v = None
            self._len = 0

        def _set(self, k, v, reserve: int) -> None:
            """Make (k, v) the filled part of new buffers with ``reserve`` free columns after it."""
            b, h, n, d = k.shape
            self._k = k.new_empty((b, h, n + reserve, d))
            self._v = v.new_empty((b, h, n + reserve, v.shape[-1]))
            self._k[:, :, :n] = k
            self._v[:, :, :n] = v
            self._len = n
            self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self._k is None:
                self._set(key_states, value_states, self.reserve)
                return self.keys, self.values
            if self._len + n > self._k.shape[-2]:
                self._set(self.keys, self.values, max(self.reserve, n))
            self._k[:, :, self._len:self._len + n] = key_states
            self._v[:, :, self._len:self._len + n] = value_states
            self._len += n
            self.keys, self.values = self._k[:, :, :self._len], self._v[:, :, :self._len]
            return self.keys, self.values

        def free_columns(self) -> int:
            return 0 if self._k is None else self._k.shape[-2] - self._len

        def batch_select_indices(self, indices) -> None:
            if self._k is not None:
                self._k, self._v = self._k[indices], self._v[indices]
                self.keys, self.values = self._k[:, :, :self._len], self._v[:, :, :self._len]

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._k is not None:
                self._k = self._k.repeat_interleave(repeats, dim=0)
                self._v = self._v.repeat_interleave(repeats, dim=0)
                self.keys, self.values = self._k[:, :, :self._len], self._v[:, :, :self._len]

        def select_columns(self, cols) -> None:
            self._set(self.keys.index_select(2, cols), self.values.index_select(2, cols), self.free_columns())

    return PreallocLayer


class TransformersGenerator:
    """Batched KV-cache decoding over a transformers causal LM (see the module docstring)."""

    name = "transformers"

    def __init__(self, model_dir: str, *, dtype: str = "auto", device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = backends.resolve_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, self.dtype))
        self.model.to(self.device).eval()
        _use_grouped_decode_attention(self.model)
        self.stop_ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.stop_ids)
        self.last_stats: dict = {}

    @property
    def attention(self) -> str | None:
        """The model's attention implementation (GROUPED_DECODE_ATTENTION where it was loaded with sdpa)."""
        return getattr(self.model.config, "_attn_implementation", None)

    def _prefix_cache(self, prefix: list[int]):
        """KV cache of the prompt prefix shared by every prompt (chat template + system prompt), computed once."""
        import torch
        from transformers import DynamicCache

        if not prefix:
            return None
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
        self.model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True,
                   logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in self._layers(cache)]

    # One prefill micro-batch: [shared prefix | left padding | prompt suffix], logits only for the last position.
    def _prefill(self, ids_list: list[list[int]], prefix_kv, prefix_len: int):
        import torch
        from transformers import DynamicCache

        b, width = len(ids_list), max(len(x) for x in ids_list)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for i, x in enumerate(ids_list):
            ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[i, prefix_len + width - len(x):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)[:, prefix_len:]
        cache = DynamicCache(config=self.model.config)
        if prefix_kv is not None:
            for li, (k, v) in enumerate(prefix_kv):
                cache.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1), li)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float(), cache, mask

    @staticmethod
    def _layers(cache) -> list:
        layers = getattr(cache, "layers", None)
        if layers is None:  # pragma: no cover - transformers < 4.56 layout
            raise RuntimeError("unsupported transformers cache layout (no .layers); upgrade transformers")
        return layers

    def _decode_cache(self, reserve: int):
        """An empty cache for decoding: preallocated layers (``reserve`` free columns) when every layer is a
        plain full-attention DynamicLayer, else transformers' own DynamicCache layers."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        layers = self._layers(cache)
        if layers and all(type(layer) is DynamicLayer for layer in layers):
            cls = _prealloc_layer_class()
            cache.layers = [cls(reserve) for _ in layers]
        return cache

    def _merge(self, parts: list[tuple[Any, Any, Any]], reserve: int):
        """Concatenate prefilled micro-batches into one decode batch (logits, cache, mask), padding each on the
        left; the cache gets ``reserve`` free columns per layer for the tokens still to come."""
        import torch

        width = max(p[2].shape[1] for p in parts)
        logits = torch.cat([p[0] for p in parts])
        mask = torch.cat([torch.nn.functional.pad(p[2], (width - p[2].shape[1], 0)) for p in parts])
        cache = self._decode_cache(reserve)
        for li in range(len(self._layers(parts[0][1]))):
            ks, vs = [], []
            for _, c, m in parts:
                layer = self._layers(c)[li]
                padw = width - m.shape[1]
                ks.append(torch.nn.functional.pad(layer.keys, (0, 0, padw, 0)))
                vs.append(torch.nn.functional.pad(layer.values, (0, 0, padw, 0)))
            cache.update(torch.cat(ks) if len(ks) > 1 else ks[0], torch.cat(vs) if len(vs) > 1 else vs[0], li)
        return logits, cache, mask

    def _trim(self, cache, mask):
        """Drop the KV columns that are padding in every remaining row (they cost attention time only; the
        positions are explicit, so removing them changes nothing else)."""
        used = mask.any(0)
        if int((~used).sum()) < TRIM_MIN_COLUMNS:
            return mask
        cols = used.nonzero().squeeze(-1)
        for layer in self._layers(cache):
            if hasattr(layer, "select_columns"):
                layer.select_columns(cols)
            else:
                layer.keys = layer.keys.index_select(2, cols)
                layer.values = layer.values.index_select(2, cols)
        return mask.index_select(1, cols)

    def generate(
        self, prompts: Sequence[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
        max_new_tokens: int = 128, seed: int = 0, batch_size: int | None = None, progress: bool = True,
        on_step: Callable[[int], None] | None = None, prefix_hint: str | None = None,
    ) -> list[list[Completion]]:
        import torch

        encoded = encode_prompts(self.tokenizer, prompts)
        hint = encode_prompts(self.tokenizer, [prefix_hint])[0] if prefix_hint is not None else None
        batch_size = batch_size or backends.default_batch_size(self.device)
        per_batch = max(1, batch_size // n)  # prompts per decode batch (a batch holds per_batch * n rows)
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))  # longest first: OOM shows early
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        # decode_forward_*: the model's forward in decode steps alone (rows include finished ones not yet dropped);
        # the rest of the generation time, less prefill, is the loop's own
        stats = {"completion_tokens": 0, "prefill_tokens": 0, "shared_prefix_tokens": 0, "seconds": 0.0,
                 "prefill_seconds": 0.0, "decode_forward_seconds": 0.0, "decode_forward_rows": 0}
        bar = progress_bar(len(prompts) * n, f"generate ({self.device}, {self.dtype})") if progress else None
        t_start = time.perf_counter()
        try:
            with torch.inference_mode():
                prefix_len = shared_prefix_length(encoded, hint)
                prefix_kv = self._prefix_cache(encoded[0][:prefix_len])
                stats["shared_prefix_tokens"] = prefix_len
                suffixes = [x[prefix_len:] for x in encoded]
                for b0 in range(0, len(order), per_batch):
                    batch = order[b0:b0 + per_batch]
                    self._generate_batch(batch, suffixes, prefix_kv, prefix_len, results, n=n,
                                         temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                         seed=seed, stats=stats, bar=bar, t_start=t_start, on_step=on_step)
        finally:
            if bar is not None:
                bar.close()
        stats["seconds"] = time.perf_counter() - t_start
        stats["tokens_per_second"] = stats["completion_tokens"] / stats["seconds"] if stats["seconds"] > 0 else None
        self.last_stats = stats
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch, suffixes, prefix_kv, prefix_len, results, *, n, temperature, top_p,
                        max_new_tokens, seed, stats, bar, t_start, on_step):
        import torch

        t0 = time.perf_counter()
        # prefill in micro-batches of similar length (the batch is sorted longest first)
        parts, start = [], 0
        while start < len(batch):
            width = prefix_len + len(suffixes[batch[start]])
            m = max(1, PREFILL_TOKENS // max(width, 1))
            chunk = batch[start:start + m]
            parts.append(self._prefill([suffixes[i] for i in chunk], prefix_kv, prefix_len))
            stats["prefill_tokens"] += sum(len(suffixes[i]) for i in chunk)
            start += m
        logits, cache, mask = self._merge(parts, reserve=max_new_tokens)
        del parts
        mask = self._trim(cache, mask)
        if n > 1:
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            cache.batch_repeat_interleave(n)
        stats["prefill_seconds"] += time.perf_counter() - t0

        rows = [(p, s) for p in batch for s in range(n)]  # (prompt index, sample index) of each batch row
        generated: list[list[int]] = [[] for _ in rows]
        live = list(range(len(rows)))  # rows (indices into `rows`) held in the batch tensors, in order
        done = [False] * len(rows)
        n_done_in_batch, waste = 0, 0.0
        stop = torch.tensor(sorted(self.stop_ids), device=logits.device)
        next_pos = mask.sum(-1, keepdim=True)  # position of the next token per row (masks count real tokens)
        for step in range(max_new_tokens):
            if temperature == 0.0:
                tokens = logits.argmax(-1)
            else:
                u = torch.tensor([uniform(seed, rows[r][0], rows[r][1], step) for r in live], dtype=torch.float64,
                                 device=logits.device)
                tokens = sample_tokens(logits, u, temperature, top_p)
            tok_list = tokens.tolist()
            finished = torch.isin(tokens, stop).tolist()
            for r, t, f in zip(live, tok_list, finished):
                if done[r]:  # finished earlier, not yet dropped from the batch: its tokens are ignored
                    continue
                generated[r].append(t)
                stats["completion_tokens"] += 1
                if f or step == max_new_tokens - 1:
                    done[r] = True
                    n_done_in_batch += 1
                    p, s = rows[r]
                    ids = tuple(generated[r])
                    results[p][s] = Completion(
                        text=self.tokenizer.decode(list(ids[:-1] if f else ids), skip_special_tokens=True),
                        token_ids=ids, finish_reason="stop" if f else "length",
                    )
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                elapsed = time.perf_counter() - t_start
                bar.set_postfix_str(f"{stats['completion_tokens'] / max(elapsed, 1e-9):.0f} tok/s", refresh=False)
            if on_step is not None:
                on_step(step)
            if n_done_in_batch == len(live):
                break
            # Finished rows are dropped from the batch once the compute they waste (in decode steps) exceeds the
            # cost of the copy that drops them (ski-rental rule): many rows finishing at once go immediately, a
            # single straggler is carried for a while.
            waste += n_done_in_batch / len(live)
            if n_done_in_batch and waste >= COMPACT_AFTER_STEPS:
                keep = [j for j, r in enumerate(live) if not done[r]]
                idx = torch.tensor(keep, device=logits.device)
                cache.batch_select_indices(idx)
                mask, next_pos, tokens = mask[idx], next_pos[idx], tokens[idx]
                live = [live[j] for j in keep]
                n_done_in_batch, waste = 0, 0.0
                mask = self._trim(cache, mask)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            t_forward = time.perf_counter()
            out = self.model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=next_pos,
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1, :].float()
            stats["decode_forward_seconds"] += time.perf_counter() - t_forward
            stats["decode_forward_rows"] += len(live)
            next_pos = next_pos + 1
