"""Runtime package versions a compiled plan was made for, recorded in ``plan.json``.

This is the tested set (the versions ftplan's runtime is exercised with), written as a constant table so that
a plan does not depend on what happens to be installed where ``ftplan compile`` runs: two machines compile the
same pipeline to the same bytes. Bump it together with the runtime's tests.
"""

from __future__ import annotations

PINNED_VERSIONS: dict[str, str] = {
    "accelerate": "1.15.0",
    "bitsandbytes": "0.50.2",
    "datasets": "5.2.0",
    "deepspeed": "0.19.8",
    "gguf": "0.19.0",
    "llama-cpp-python": "0.3.36",
    "peft": "0.21.2",
    "torch": "2.13.0",
    "transformers": "5.24.0",
    "triton": "3.9.0",
    "trl": "1.16.0",
}
"""Distribution name -> version the runtime is tested with (sorted by name)."""
