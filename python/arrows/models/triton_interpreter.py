"""Whether arrows' Triton kernels run in Triton's interpreter (on CPU tensors) instead of on a GPU.

Set by `TRITON_INTERPRET=1` in the environment before Triton is imported; the tests set it on a
machine without a GPU, so that every kernel is checked there too (slowly)."""

from __future__ import annotations

import os

try:  # Triton ≥ 3.4; read by triton.jit when a kernel is defined
    from triton import knobs

    INTERPRETED = bool(knobs.runtime.interpret)
except ImportError:
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
