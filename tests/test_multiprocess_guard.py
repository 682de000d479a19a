"""The non-finite-loss guard decides collectively: when any rank's loss is non-finite, every rank raises.

Two CPU processes (torch.distributed gloo on 127.0.0.1) run ``pspo.trainer.flagged_ranks`` with a SUM all-reduce;
each must see the same answer. Joins have timeouts, so a rank that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import datetime
import queue
import socket
import time
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from pspo.errors import PSPOError
from pspo.trainer import PSPOTrainer, flagged_ranks

JOIN_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, results) -> None:
    """One rank: a flag case on rank 1 only, then a case with no flag; puts (rank, results) on the queue."""
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S))

        def reduce(t):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return t

        out = {
            "one_count": len(flagged_ranks(rank == 1, reduce, rank=rank, world_size=world_size)),
            "one_ranks": flagged_ranks(rank == 1, reduce, rank=rank, world_size=world_size),
            "none_count": len(flagged_ranks(False, reduce, rank=rank, world_size=world_size)),
            "all_ranks": flagged_ranks(True, reduce, rank=rank, world_size=world_size),
        }
        dist.destroy_process_group()
        results.put((rank, out))
    except Exception as e:  # report, so that the parent fails with the reason
        results.put((rank, repr(e)))


def test_all_ranks_agree_on_a_flag_set_on_one_rank():
    world_size = 2
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, results), daemon=True) for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S  # one budget for the whole test, so a hang costs ~60 s at most
    got = {}
    try:
        for _ in range(world_size):
            rank, out = results.get(timeout=max(0.1, deadline - time.monotonic()))
            got[rank] = out
    except queue.Empty:
        pytest.fail(f"a rank hung: results only from ranks {sorted(got)}")
    finally:
        for p in procs:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
            p.join(timeout=5)
    assert not hung, "a rank did not exit"
    for rank in range(world_size):
        assert isinstance(got[rank], dict), f"rank {rank} failed: {got[rank]}"
        assert got[rank] == {"one_count": 1, "one_ranks": [1], "none_count": 0, "all_ranks": [0, 1]}, rank
    assert all(p.exitcode == 0 for p in procs)


def test_single_process_identity_reduce():
    identity = lambda t: t  # noqa: E731 - accelerate's reduce with one process
    assert len(flagged_ranks(True, identity)) == 1
    assert len(flagged_ranks(False, identity)) == 0
    assert flagged_ranks(True, identity) == [0]
    assert flagged_ranks(False, identity) == []


def _fake_trainer(loss: torch.Tensor, process_index: int, num_processes: int, other_ranks_bad=()):
    """A PSPOTrainer without __init__: just what training_step's guard reads; `reduce` adds the other ranks' flags."""
    calls = []

    def reduce(t, reduction="mean"):
        calls.append(reduction)
        t = t.clone()
        for r in other_ranks_bad:
            t[r] += 1
        return t

    trainer = PSPOTrainer.__new__(PSPOTrainer)
    trainer.accelerator = SimpleNamespace(reduce=reduce, process_index=process_index, num_processes=num_processes)
    trainer.state = SimpleNamespace(global_step=3)
    trainer.objective = "pspo"
    return trainer, calls


@pytest.fixture
def parent_loss(monkeypatch):
    """Patch the parent's training_step (the one PSPOTrainer's super() call reaches) to return a chosen loss."""
    box = {}
    parent = PSPOTrainer.__mro__[1]
    monkeypatch.setattr(parent, "training_step", lambda self, model, inputs, n: box["loss"])
    return box


def test_training_step_raises_on_a_finite_rank_when_another_rank_is_not(parent_loss):
    parent_loss["loss"] = torch.tensor(0.5)
    trainer, calls = _fake_trainer(parent_loss["loss"], process_index=0, num_processes=2, other_ranks_bad=(1,))
    with pytest.raises(PSPOError, match=r"^non-finite loss \(on another rank\) at step 4 \(objective pspo\); "
                                        r"training stopped .*1 of 2 rank\(s\): 1\); the last good checkpoint is kept$"):
        trainer.training_step(None, None, None)
    assert calls == ["sum"]


def test_training_step_single_process(parent_loss):
    parent_loss["loss"] = torch.tensor(float("nan"))
    trainer, calls = _fake_trainer(parent_loss["loss"], process_index=0, num_processes=1)
    with pytest.raises(PSPOError, match=r"^non-finite loss \(nan\) at step 4 \(objective pspo\); training stopped") as e:
        trainer.training_step(None, None, None)
    assert "1 of 1 rank(s): 0" in str(e.value) and "\n" not in str(e.value)
    parent_loss["loss"] = torch.tensor(0.25)
    trainer, calls = _fake_trainer(parent_loss["loss"], process_index=0, num_processes=1)
    assert trainer.training_step(None, None, None) is parent_loss["loss"]
    assert calls == ["sum"]
