"""Record the CUDA caching allocator's history in every Python process of a run (``calibrate.py --memory-history``).

With ``FTPLAN_MEMORY_HISTORY=PREFIX`` set and this folder first on ``PYTHONPATH``, a process that initialises CUDA
starts recording at that moment (``torch.cuda._lazy_call``: processes that never touch the GPU, such as the
launcher or ``run.sh``'s checks, create no CUDA context) and writes ``PREFIX.<pid>.pickle`` when it exits: every
allocation and free with its Python stack, and the segments left at the end. ``memory_history.py`` reads it.
"""

import atexit
import os

_PREFIX = os.environ.get("FTPLAN_MEMORY_HISTORY")

if _PREFIX:
    import torch

    def _start() -> None:
        torch.cuda.memory._record_memory_history(max_entries=2_000_000, context="alloc", stacks="python")

        def _dump() -> None:
            torch.cuda.memory._dump_snapshot(f"{_PREFIX}.{os.getpid()}.pickle")

        atexit.register(_dump)

    torch.cuda._lazy_call(_start)
