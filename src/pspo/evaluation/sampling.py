"""What both generation backends share: the ``Completion`` record, batch-invariant sampling and the tokenization.

Sampling (T > 0) draws each row's uniform from a counter-based hash of (seed, prompt index, sample index, step),
so a sample does not depend on the batch it lands in or on the batch size. Prompts are tokenized the same way for
both backends (vLLM is given the token IDs).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

from pspo.errors import PSPOError

# A token prefix shared by every prompt (chat template + system prompt) at least this long is prefilled once.
SHARED_PREFIX_MIN = 8


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]  # generated tokens, including the stop token if there is one
    finish_reason: str  # "stop" | "length"


# --- counter-based uniforms (batch-invariant sampling) ------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniform(seed: int, prompt: int, sample: int, step: int) -> float:
    """A uniform in [0, 1) that depends only on (seed, prompt index, sample index, step)."""
    h = _splitmix64(seed & _MASK64)
    for v in (prompt, sample, step):
        h = _splitmix64(h ^ (v & _MASK64))
    return (h >> 11) * (1.0 / (1 << 53))


def prompt_seed(seed: int, prompt: int) -> int:
    """A 31-bit seed for one prompt's samples (vLLM's n samples of a prompt use ``seed + sample index``)."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (prompt & _MASK64)) >> 33


def sample_tokens(logits, uniforms, temperature: float, top_p: float):
    """Inverse-CDF sampling of one token per row from softmax(logits / T) restricted to the top-p nucleus.

    ``logits``: [B, V] float tensor; ``uniforms``: [B] float64 tensor in [0, 1). Exact: the nucleus is the
    smallest set of most likely tokens whose mass reaches top_p (the token that crosses top_p is kept).
    """
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1).double()
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        cum = sorted_probs.cumsum(-1)
        keep = (cum - sorted_probs) < top_p
        keep[:, 0] = True
        sorted_probs = sorted_probs * keep
        cum = sorted_probs.cumsum(-1)
        target = (uniforms * cum[:, -1]).unsqueeze(-1)
        idx = torch.searchsorted(cum, target, right=True).clamp_(max=probs.shape[-1] - 1)
        idx = torch.minimum(idx, keep.sum(-1, keepdim=True) - 1)
        return order.gather(-1, idx).squeeze(-1)
    cum = probs.cumsum(-1)
    target = (uniforms * cum[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cum, target, right=True).clamp_(max=probs.shape[-1] - 1)
    return idx.squeeze(-1)


# --- tokenization shared by both backends -----------------------------------------------------------------------
def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    if not ids:
        raise PSPOError("the tokenizer and generation config define no eos token; cannot tell where a completion ends")
    return ids


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token IDs of each prompt. A chat-templated prompt already holds its special tokens, so none are added;
    a plain-text (fallback) prompt gets the tokenizer's own (e.g. BOS)."""
    from pspo.prompts import has_chat_template

    add_special = not has_chat_template(tokenizer)
    return [tokenizer(p, add_special_tokens=add_special)["input_ids"] for p in prompts]


def shared_prefix_length(encoded: Sequence[Sequence[int]], hint: Sequence[int] | None = None) -> int:
    """Length of the token prefix common to every prompt (and to ``hint``, e.g. the prompt template rendered with
    an empty question, so that the prefix does not depend on which prompts are in the call), leaving each prompt
    at least one token of its own; 0 if shorter than SHARED_PREFIX_MIN."""
    if not encoded:
        return 0
    first, limit = encoded[0], min(len(x) for x in encoded) - 1
    if hint is not None:
        limit = min(limit, len(hint))
    n = 0
    while n < limit and all(x[n] == first[n] for x in encoded) and (hint is None or hint[n] == first[n]):
        n += 1
    return n if n >= SHARED_PREFIX_MIN else 0


def progress_bar(total_rows: int, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total_rows, desc=desc, unit="seq", file=sys.stderr, dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0, leave=False,
    )
