"""Training checkpoints: find the latest complete one, drop what a kill left half-written, and never resume a run
of another configuration (its checkpoints are moved aside to ``<dir>.stale-<hash>``, not overwritten)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from pspo.io import write_json_atomic

log = logging.getLogger("pspo.train")

RUN_CONFIG_FILE = "pspo_run_config.json"  # the identity (config hash) of the run whose checkpoints a directory holds
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    m = _CKPT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def _is_complete(ckpt: Path) -> bool:
    """HF writes trainer_state.json last; a checkpoint whose state file parses is complete."""
    try:
        json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(checkpoint_dir: str | os.PathLike, *, remove_incomplete: bool = False) -> Path | None:
    """The complete checkpoint with the highest step in ``checkpoint_dir`` (or None).

    With ``remove_incomplete``, checkpoints newer than it that a kill left half-written are deleted.
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    ckpts = sorted((p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None), key=checkpoint_step)
    complete = [p for p in ckpts if _is_complete(p)]
    latest = complete[-1] if complete else None
    if remove_incomplete:
        for p in ckpts:
            if not _is_complete(p) and (latest is None or checkpoint_step(p) > checkpoint_step(latest)):
                log.warning("removing incomplete checkpoint %s (the run was killed while saving it)", p)
                shutil.rmtree(p, ignore_errors=True)
    return latest


def resume_point(checkpoint_dir: Path, run_hash: str, run_config: dict) -> Path | None:
    """The checkpoint to resume from, for the run identified by ``run_hash`` (None: start at step 0).

    Checkpoints of another configuration are never resumed, nor overwritten: they are moved aside. The directory is
    then marked with this run's identity.
    """
    marker = checkpoint_dir / RUN_CONFIG_FILE
    resume = latest_checkpoint(checkpoint_dir, remove_incomplete=True)
    if marker.is_file():
        old = json.loads(marker.read_text(encoding="utf-8")).get("config_hash")
        if old != run_hash and resume is not None:
            stale = checkpoint_dir.with_name(f"{checkpoint_dir.name}.stale-{old}")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(checkpoint_dir, stale)
            print(f"pspo train: {checkpoint_dir} held checkpoints of another configuration (hash {old}, this run "
                  f"{run_hash}); moved them to {stale} and starting from step 0", file=sys.stderr)
            checkpoint_dir.mkdir(parents=True)
            resume = None
    write_json_atomic(marker, {"config_hash": run_hash, "config": run_config})
    if resume is not None:
        log.warning("resuming from %s (step %s)", resume, checkpoint_step(resume))
        print(f"pspo train: resuming from {resume}", file=sys.stderr)
    return resume


def checkpoint_record(checkpoint_dir: Path) -> dict:
    """What summary.json says about the checkpoints: their names and the disk they use."""
    names = sorted(p.name for p in checkpoint_dir.iterdir() if checkpoint_step(p) is not None)
    size = sum(f.stat().st_size for f in checkpoint_dir.rglob("*") if f.is_file()) if checkpoint_dir.is_dir() else 0
    return {"checkpoint_dir": str(checkpoint_dir), "checkpoints": names, "checkpoint_disk_bytes": size}


__all__ = ["RUN_CONFIG_FILE", "checkpoint_step", "latest_checkpoint", "resume_point", "checkpoint_record"]
