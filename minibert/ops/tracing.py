"""A trace of the ops as they run, forward and backward::

    with minibert.ops.trace(params=model.params) as t:
        out, cache = model.forward(ids, ...)
        model.backward(cache, ...)
    print(t.format())

records every call of an op's ``forward`` and ``backward`` (and of the paired variants such
as ``gelu.bias_forward`` / ``gelu.bias_backward``) in the order they run: the op, the shapes
and L2 norms of its array inputs and outputs, the parameters among its inputs, and for a
backward the forward call it undoes (found by its cache: a backward receives the very cache
its forward returned). Read top to bottom, a model's backward is its forward reversed, and
each parameter's gradient appears at the backward of the op that read the parameter.

How: ``trace()`` registers a ``Trace`` as an op hook (``hooks.py``) for the duration of the
block. Every op's forward and backward calls the registered hooks, so the model is traced
without knowing; an op that calls another op inside (a nested call) is recorded once, as
itself. The hooks are one registry per process: not meant for ops on concurrent threads.
Blocks may nest: each trace records the op calls made inside its own block.
The trace holds a reference to each cache until the block ends (to match backward calls).
(This module is ``tracing``, not ``trace``, so that ``minibert.ops.trace`` is the function.)
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np

from ..backend import get_array_module
from . import hooks


@dataclass
class TraceEvent:
    """One op call. ``inputs``/``outputs``: (shape, L2 norm or None for integer arrays) of
    each array argument / result, in order; ``params``: the parameter name of each input
    (None where it is not a parameter); ``undoes``: for a backward, the index of its forward."""
    index: int
    phase: str                      # "forward" or "backward"
    op: str                         # "linear", "gelu.bias", ...
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    params: list = field(default_factory=list)
    undoes: int | None = None
    _grad_params: list = field(default_factory=list, repr=False)   # forward: named by backward


class Trace(hooks.OpHook):
    """The events of one ``trace()`` block, in the order the ops ran: an op hook whose
    post callbacks record each call."""

    def __init__(self, params: dict | None = None):
        self.events: list[TraceEvent] = []
        self._caches: dict = {}                         # id(cache) -> (cache, forward index)
        # parameter views by address: (start, end, name), to name an input that is one
        # parameter or spans several back to back (the model's one [Wq; Wk; Wv] product)
        self._params = sorted((*_span(a), name) for name, a in (params or {}).items()
                              if _span(a) is not None)

    @property
    def forward(self) -> list:
        return [e for e in self.events if e.phase == "forward"]

    @property
    def backward(self) -> list:
        return [e for e in self.events if e.phase == "backward"]

    def _record(self, op, phase, args, kwargs, result):
        arrays_in = [a for a in (*args, *kwargs.values()) if _is_array(a)]
        ev = TraceEvent(len(self.events), phase, op)
        if phase == "forward":
            y, cache = result
            ev.outputs = [_describe(y)]
            ev.inputs = [_describe(a) for a in arrays_in]
            ev.params = [self._param_name(a) for a in arrays_in]
            # the backward returns one gradient per floating input, in order (ids have none)
            ev._grad_params = [p for a, p in zip(arrays_in, ev.params)
                               if np.dtype(a.dtype).kind == "f"]
            self._caches[id(cache)] = (cache, ev.index)
        else:
            cache = args[1] if len(args) > 1 else kwargs.get("cache")
            ev.inputs = [_describe(args[0])] if _is_array(args[0]) else []
            outs = result if isinstance(result, tuple) else (result,)
            ev.outputs = [_describe(o) if _is_array(o) else None for o in outs]
            hit = self._caches.get(id(cache))
            if hit is not None:
                ev.undoes = hit[1]
                ev.params = list(self.events[hit[1]]._grad_params[:len(outs)])
        self.events.append(ev)

    def forward_post(self, op, args, kwargs, result):
        self._record(op, "forward", args, kwargs, result)

    def backward_post(self, op, args, kwargs, result):
        self._record(op, "backward", args, kwargs, result)

    def _param_name(self, a):
        """The name of the parameter(s) whose memory ``a`` covers exactly, else None."""
        span = _span(a)
        if span is None or not getattr(getattr(a, "flags", None), "c_contiguous", False):
            return None
        names = [n for s, e, n in self._params if span[0] <= s and e <= span[1]]
        covered = sum(e - s for s, e, n in self._params if span[0] <= s and e <= span[1])
        if not names or covered != span[1] - span[0]:
            return None
        if len(names) == 1:
            return names[0]
        head, tail = os.path.commonprefix(names), os.path.commonprefix([n[::-1] for n in names])[::-1]
        return head + "{" + ",".join(n[len(head):len(n) - len(tail)] for n in names) + "}" + tail

    def format(self) -> str:
        """The trace as a table: one line per op call, the backward marked with the forward
        it undoes and the parameter gradients it produces."""
        lines = [f"{'#':>4}  {'phase':<8} {'op':<14} {'inputs -> outputs (shape |norm|)':<60} notes"]
        for e in self.events:
            ins = ", ".join(_fmt(d) for d in e.inputs)
            outs = ", ".join(_fmt(d) for d in e.outputs if d is not None)
            if e.phase == "forward":
                note = "reads " + ", ".join(p for p in e.params if p) if any(e.params) else ""
            else:
                note = f"undoes #{e.undoes}" if e.undoes is not None else "(no forward seen)"
                grads = [p for p in e.params if p]
                if grads:
                    note += "; gradient of " + ", ".join(grads)
            lines.append(f"{e.index:>4}  {e.phase:<8} {e.op:<14} {ins + ' -> ' + outs:<60} {note}")
        return "\n".join(lines)


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype") and getattr(a, "ndim", 0) > 0


def _span(a):
    """(first byte, one past the last byte) of an array's memory, or None."""
    if hasattr(a, "__array_interface__"):
        ptr = a.__array_interface__["data"][0]
    elif hasattr(a, "data") and hasattr(a.data, "ptr"):
        ptr = a.data.ptr                                         # CuPy
    else:
        return None
    return ptr, ptr + a.nbytes


def _describe(a):
    """(shape, L2 norm) of an array; the norm is None for integer arrays."""
    if np.dtype(a.dtype).kind != "f":
        return tuple(a.shape), None
    xp = get_array_module(a)
    return tuple(a.shape), float(xp.sqrt((a.astype(np.float64) ** 2).sum()))


def _fmt(d) -> str:
    shape, norm = d
    s = "x".join(map(str, shape))
    return s if norm is None else f"{s} |{norm:.3g}|"


@contextlib.contextmanager
def trace(params: dict | None = None):
    """Record every op's forward and backward call inside the block (the module docstring).

    Args:
        params: optional name -> array (``model.params``): inputs that are these arrays are
            named in the trace, and so are the gradients their backward produces.
    Yields:
        a ``Trace``; its ``events`` fill as the ops run.
    """
    t = Trace(params)
    try:
        with hooks.use(t):
            yield t
    finally:
        t._caches.clear()
