"""The glue between Snakemake's `script:` directive and the package: logging, thread variables, one-line errors.

Every script in workflow/scripts is ``run_job(snakemake, lambda: <one package call>)``. The rule's threads go to
OpenMP and tokenizers through the environment (read when those libraries load); torch's threads and the GPU check
are ``pspo.device``'s, through the training and evaluation calls.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from typing import Any, Callable

# The module a ``spawn``-started child imports as its ``__main__`` (see spawn_safe_main): this one, which imports
# nothing but the standard library at module level.
SPAWN_MAIN = __name__


def spawn_safe_main() -> None:
    """Make child processes started with ``spawn`` (vLLM's engine core; on CUDA vLLM always spawns) import this
    module as their ``__main__`` instead of re-running the Snakemake script from its path.

    Snakemake runs a rule's script as ``__main__`` from a temporary file whose first line defines ``snakemake``;
    ``multiprocessing.spawn`` re-executes ``__main__``'s file in the child (``_fixup_main_from_path``) under the
    name ``__mp_main__``, so the script's body runs again without its ``snakemake`` object (NameError) or, worse,
    starts the job a second time. A ``__main__`` with a module spec is re-imported by name instead
    (``_fixup_main_from_name``), so giving it this module's spec makes the child's preparation a harmless import.
    """
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.util.find_spec(SPAWN_MAIN)


def _gpu_request(smk: Any) -> int:
    resources = getattr(smk, "resources", None)
    return int(getattr(resources, "gpu", 0) or 0)


def run_job(smk: Any, body: Callable[[], Any]) -> None:
    """Run ``body`` with stdout/stderr appended to the rule's log; a PSPOError exits with its one line on stderr.
    Processes ``body`` starts with ``spawn`` do not re-run the script (:func:`spawn_safe_main`). In a local run on a
    GPU machine the job holds its own GPUs for the whole body (:func:`pspo.gpu_slots.job_gpus`)."""
    from pspo.errors import PSPOError
    from pspo.gpu_slots import POOL_ENV, job_gpus

    spawn_safe_main()
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
            gpus = stack.enter_context(job_gpus(_gpu_request(smk)))
            if gpus is not None:
                print(f"GPUs: CUDA_VISIBLE_DEVICES={','.join(gpus)} (this job's, of {os.environ[POOL_ENV]})",
                      flush=True)
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
