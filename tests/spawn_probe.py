"""The target of the spawned child in tests/test_spawn.py (a child can only run a function it can import)."""

import os


def write_pid(path: str) -> None:
    with open(path, "w") as f:
        f.write(f"{os.getpid()}\n")
