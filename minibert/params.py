"""All parameters of a model in one flat buffer, exposed as named views.

As in llm.c, one contiguous array holds every parameter and a twin array holds every
gradient; each named tensor (``encoder.layer.3.attention.self.query.weight``, ...) is a view
carved out of it, with the shape Hugging Face gives it. This makes three things trivial:
the optimizer updates everything in one vectorised pass over the flat buffer, a gradient
norm is one reduction, and a checkpoint is one array plus a table of names and offsets.

Names are Hugging Face's state-dict names, so checkpoints map one to one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import to_numpy


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple
    init: str = "normal"        # "normal" (std = initializer_range), "zeros" or "ones"


def _to_host(a) -> np.ndarray:
    """NumPy array from a NumPy, CuPy or torch tensor (torch only if the user passes one)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return to_numpy(a)


#: numbers drawn at a time by ``FlatParams.initialize``
INIT_CHUNK = 1 << 20


class FlatParams:
    """Named views into one parameter buffer ``data`` and one gradient buffer ``grad``.

    Attributes:
        data, grad: 1-D arrays of ``size`` elements (dtype, device of the model).
        params, grads: name -> view into ``data`` / ``grad`` with the parameter's shape.
        offsets: name -> (start, stop) of that view in the flat buffers.
    """

    def __init__(self, specs, dtype=np.float32, xp=np):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in {names}")
        self.specs = list(specs)
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.size = sum(int(np.prod(s.shape)) for s in specs)
        self.data = xp.zeros(self.size, dtype=self.dtype)
        self.grad = xp.zeros(self.size, dtype=self.dtype)
        self.params, self.grads, self.offsets = {}, {}, {}
        start = 0
        for s in specs:
            n = int(np.prod(s.shape))
            self.offsets[s.name] = (start, start + n)
            self.params[s.name] = self.data[start:start + n].reshape(s.shape)
            self.grads[s.name] = self.grad[start:start + n].reshape(s.shape)
            start += n

    def initialize(self, seed: int, std: float):
        """BERT's initialization: weights ~ N(0, std^2), biases zero, LayerNorm weight one.

        Drawn on the host in float64 from one generator in parameter order, then cast, so the
        same seed gives the same model on NumPy and CuPy and in float32 and float64.
        """
        rng = np.random.default_rng(seed)
        self.data.fill(0)
        for s in self.specs:
            a, b = self.offsets[s.name]
            if s.init == "ones":
                self.data[a:b] = 1.0
            elif s.init == "normal":
                # drawn in pieces: the same stream as one draw of b - a numbers, without a
                # float64 copy of the whole model (BERT-base: 880 MB) at the peak of memory
                for lo in range(a, b, INIT_CHUNK):
                    hi = min(b, lo + INIT_CHUNK)
                    chunk = (rng.standard_normal(hi - lo) * std).astype(self.dtype)
                    self.data[lo:hi] = self.xp.asarray(chunk)

    def span(self, first: str, last: str, shape):
        """Views ``(data, grad)`` of the parameters from ``first`` to ``last`` (adjacent in
        the flat buffer) as one array of ``shape``: e.g. the query, key and value weights as
        one (3H, H) matrix."""
        a, b = self.offsets[first][0], self.offsets[last][1]
        if int(np.prod(shape)) != b - a:
            raise ValueError(f"parameters {first!r} to {last!r} hold {b - a} numbers, not the "
                             f"{int(np.prod(shape))} of shape {tuple(shape)}")
        return self.data[a:b].reshape(shape), self.grad[a:b].reshape(shape)

    def zero_grad(self):
        self.grad.fill(0)

    def load_state_dict(self, state: dict, strict: bool = True):
        """Copy ``state`` (name -> array) into the views, checking names and shapes first.

        Nothing is written unless every check passes, so a bad checkpoint never leaves the
        model half loaded. With ``strict``, missing and unexpected names are errors.
        """
        missing = [n for n in self.params if n not in state]
        unexpected = [n for n in state if n not in self.params]
        if strict and (missing or unexpected):
            raise ValueError(f"state dict does not match the model: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        wrong = [f"{n}: {tuple(np.shape(state[n]))} (expected {tuple(self.params[n].shape)})"
                 for n in self.params if n in state
                 and tuple(np.shape(state[n])) != tuple(self.params[n].shape)]
        if wrong:
            raise ValueError(f"state dict has tensors of the wrong shape: {wrong}")
        for n, view in self.params.items():
            if n in state:
                view[...] = self.xp.asarray(_to_host(state[n]).astype(self.dtype))
        return missing, unexpected

    def state_dict(self) -> dict:
        """name -> NumPy copy of each parameter."""
        return {n: to_numpy(v).copy() for n, v in self.params.items()}
