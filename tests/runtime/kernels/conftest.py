"""Run the Triton kernel tests on machines without a GPU through Triton's interpreter.

Triton chooses between compiled and interpreted kernels when a `@triton.jit` function is defined, reading
TRITON_INTERPRET at that moment. pytest imports this conftest before the test modules of this folder, and
with no CUDA device it:

1. sets TRITON_INTERPRET=1 (and triton's knob, if triton is already imported);
2. if triton was imported earlier (any test module that imports a transformers model does, through
   torch._dynamo), makes triton's own @jit helpers (tl.sum, tl.max, tl.sigmoid, ...) callable from
   interpreted kernels; see `_interpret_stale_triton_helpers`;
3. if the kernel modules were imported earlier with compiled kernels, re-executes them (importlib.reload, in
   dependency order). Test modules here import the kernels after this runs, so they see interpreted kernels.
   Code elsewhere that captured the old functions keeps the compiled ones; that is outside these tests.

test_patch.py checks steps 2-3 in a subprocess that imports triton and the kernels first.

Numerics under the interpreter: it converts fp32 -> bf16 by truncation where GPUs round to nearest even, so
bf16 comparisons allow about one bf16 ulp more than they would on a GPU.

On a CUDA machine the environment is left alone, tensors are created on the GPU (autouse fixture), and the
same tests run the compiled kernels.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

KERNEL_MODULES = (
    "ftplan_runtime.kernels._utils",
    "ftplan_runtime.kernels.rms_norm",
    "ftplan_runtime.kernels.swiglu",
    "ftplan_runtime.kernels.rope",
    "ftplan_runtime.kernels.cross_entropy",
    "ftplan_runtime.kernels.logprobs",
    "ftplan_runtime.kernels.nf4",
    "ftplan_runtime.kernels.lora",
    "ftplan_runtime.kernels.patch",
    "ftplan_runtime.kernels",
)


def _interpret_stale_triton_helpers() -> None:
    """Let interpreted kernels call triton's own @jit helpers (tl.sum, tl.max, tl.sigmoid, ...).

    If triton was imported before TRITON_INTERPRET=1 (importing transformers models does that, through
    torch._dynamo), `triton.language.standard` defined those helpers as compiled JITFunctions, whose
    `__call__` refuses to run outside a compiled kernel. Calling one from an interpreted kernel then needs an
    interpreted twin of the same Python function. The objects themselves stay in place, so the interpreter's
    numpy fast paths (which compare combine functions by identity, e.g. `tl.standard._sum_combine`) still hit.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    if getattr(JITFunction, "_ftplan_interpreted_call", False):
        return

    def __call__(self, *args, **kwargs):
        twin = self.__dict__.get("_ftplan_interpreted")
        if twin is None:
            twin = self.__dict__["_ftplan_interpreted"] = InterpretedFunction(self.fn)
        return twin(*args, **kwargs)

    JITFunction.__call__ = __call__
    JITFunction._ftplan_interpreted_call = True


def ensure_triton_interpreter() -> bool:
    """Switch to the interpreter when there is no CUDA device; returns whether it is active."""
    if torch.cuda.is_available():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    triton = sys.modules.get("triton")
    if triton is not None:
        triton.knobs.runtime.interpret = True
        standard = sys.modules.get("triton.language.standard")
        if standard is not None and type(standard.sum).__name__ == "JITFunction":
            _interpret_stale_triton_helpers()
    rms_norm = sys.modules.get("ftplan_runtime.kernels.rms_norm")
    if rms_norm is not None and type(rms_norm._rms_norm_forward_kernel).__name__ != "InterpretedFunction":
        for name in KERNEL_MODULES:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
    return True


INTERPRETED = ensure_triton_interpreter()


@pytest.fixture(autouse=True)
def _seed_and_device():
    """Seed every test; on a GPU machine, create the tests' tensors and models on CUDA."""
    torch.manual_seed(0)
    with torch.device("cpu" if INTERPRETED else "cuda"):
        yield
