"""How the row kernels of ``minibert.kernels`` are run: ``run_rows(kernel, n, *args)``.

Every elementwise or per-row kernel here (layernorm, GELU, dropout, cross-entropy, AdamW)
is a Numba function ``kernel(*args, r0, r1)`` that handles rows ``r0 <= r < r1`` of its
arrays and nothing else, compiled with ``nogil=True``. Writing them over a row range keeps
the threading decision in this one place.
"""
from __future__ import annotations


def run_rows(kernel, n, *args):
    """Runs ``kernel(*args, 0, n)``: every row, on the calling thread."""
    kernel(*args, 0, n)
