"""The glue between Snakemake's `script:` directive and the package: logging, thread variables, one-line errors.

Every script in workflow/scripts is ``run_job(snakemake, lambda: <one package call>)``. The rule's threads go to
OpenMP and tokenizers through the environment (read when those libraries load); torch's threads and the GPU check
are ``pspo.device``'s, through the training and evaluation calls.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Callable


def run_job(smk: Any, body: Callable[[], Any]) -> None:
    """Run ``body`` with stdout/stderr appended to the rule's log; a PSPOError exits with its one line on stderr."""
    from pspo.errors import PSPOError

    threads = int(getattr(smk, "threads", 1) or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log_path = smk.log[0] if len(smk.log) else None
    log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115 - closed below
    start = time.time()
    try:
        with contextlib.ExitStack() as stack:
            if log:
                stack.enter_context(contextlib.redirect_stdout(log))
                stack.enter_context(contextlib.redirect_stderr(log))
            body()
        if log:
            log.write(f"done in {time.time() - start:.1f} s\n")
    except PSPOError as error:
        line = f"error: {error}"
        if log:
            log.write(line + "\n")
        print(line, file=sys.stderr)
        sys.exit(1)
    finally:
        if log:
            log.close()
