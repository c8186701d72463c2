"""Finite-difference gradient checking, the test every hand-written backward must pass.

The idea
--------
For a scalar function ``f(x)`` and a claimed gradient ``g = df/dx``, perturb the input and
watch ``f``. The central difference

    f'(x) ~ [f(x + h) - f(x - h)] / (2h)                          error O(h^2 f''')

is exact for quadratics; minibert uses its Richardson-extrapolated form, the five-point
central stencil

    f'(x) ~ [8 (f(x + h) - f(x - h)) - (f(x + 2h) - f(x - 2h))] / (12 h)   error O(h^4 f^(5))

so that ``h`` can be large enough (1e-3) for the float64 rounding error of ``f``, about
1e-16 |f| / h, to stay far below the tolerance. Both errors are then ~1e-12 or smaller for
the smooth functions of a transformer, and a wrong backward shows up as an error of order
one, not 1e-7.

Three modes
-----------
* ``"full"``: the whole Jacobian-vector product, one input element at a time (4 evaluations
  of ``f`` per element). Use it for small inputs: it says exactly which element is wrong.
* ``"direction"``: a random unit direction ``u`` (normal draws over every element of every
  input, all inputs at once, scaled to norm one) and the directional derivative
  ``sum_i <g_i, u_i>`` against the finite difference along ``u``. Cost: 4 evaluations per
  direction, whatever the size, so it checks a whole model's parameters in one go. On
  failure each input is then checked along its own direction, so the report names the
  input that is wrong.

* ``"jacobian"`` (``check_op`` and ``jacobian_check`` only): every entry of the Jacobian
  ``dy/dx`` of a small op, rows from ``backward`` with unit upstream gradients, columns from
  the stencil on the whole output.

Error measure: ``|a - n| / max(|a| + |n|, tiny)`` for analytic ``a`` and numeric ``n``. In
full mode ``tiny`` defaults to ``1e-3 * (max|a| + max|n|)`` over that input, so an element
whose true gradient is ~0 is judged by its absolute error against the input's gradient
scale, where a finite difference can be trusted, instead of by a ratio of two roundings.

Usage
-----
``f`` takes no arguments and reads the arrays of ``inputs``, which the checker perturbs in
place and restores bit for bit afterwards (so model parameters, which are views into one
flat buffer, can be checked directly)::

    x = rng.standard_normal((4, 8)); w = ...; dy = rng.standard_normal((4, 3))
    y, cache = linear.forward(x, w, b)
    dx, dw, db = linear.backward(dy, cache)
    gradcheck(lambda: (linear.forward(x, w, b)[0] * dy).sum(),
              {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})

Use a random upstream gradient ``dy``, never ``y.sum()`` (the sum of a softmax has zero
gradient and would hide any bug).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import get_array_module, to_numpy

__all__ = ["gradcheck", "check_op", "jacobian_check", "GradcheckReport", "GradcheckError"]


@dataclass
class InputResult:
    """How one input (or one direction) fared."""
    name: str
    max_abs_err: float
    max_rel_err: float
    where: tuple | None = None     # element index of the worst relative error (full mode)
    analytic: float = 0.0          # both values at ``where`` (or the directional derivatives)
    numeric: float = 0.0


@dataclass
class GradcheckReport:
    mode: str
    rtol: float
    results: list = field(default_factory=list)

    @property
    def max_rel_err(self) -> float:
        return max((r.max_rel_err for r in self.results), default=0.0)

    @property
    def passed(self) -> bool:
        return self.max_rel_err <= self.rtol

    def __str__(self) -> str:
        lines = [f"gradcheck ({self.mode}, tolerance {self.rtol:.1e}): "
                 f"{'passed' if self.passed else 'FAILED'}",
                 f"  {'input':<40} {'max abs err':>12} {'max rel err':>12}  "
                 "worst element: analytic vs numeric"]
        for r in self.results:
            flag = "" if r.max_rel_err <= self.rtol else "   <-- FAIL"
            where = "" if r.where is None else f"{r.where} "
            lines.append(f"  {r.name:<40} {r.max_abs_err:12.3e} {r.max_rel_err:12.3e}  "
                         f"{where}{r.analytic:.10e} vs {r.numeric:.10e}{flag}")
        return "\n".join(lines)


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with the finite differences."""

    def __init__(self, report: GradcheckReport):
        super().__init__(str(report))
        self.report = report


def _scalar(v) -> float:
    return float(to_numpy(v))


def _stencil(f, set_point, h: float) -> float:
    """Five-point central difference of t -> f(point(t)) at t = 0, step h."""
    def f_at(t):
        set_point(t)
        return _scalar(f())
    fp1, fm1, fp2, fm2 = f_at(h), f_at(-h), f_at(2 * h), f_at(-2 * h)     # in this order
    return (8.0 * (fp1 - fm1) - (fp2 - fm2)) / (12.0 * h)


def _check_float64(inputs):
    if not isinstance(inputs, dict) or not inputs:
        raise TypeError(f"inputs={type(inputs).__name__} must be a non-empty dict name -> array")
    for name, x in inputs.items():
        if not hasattr(x, "dtype") or x.dtype != np.float64:
            raise TypeError(f"inputs[{name!r}] has dtype {getattr(x, 'dtype', type(x).__name__)}, "
                            "expected float64 (finite differences in float32 cannot resolve 1e-7)")


def _validate(inputs, analytic):
    _check_float64(inputs)
    for name, x in inputs.items():
        if name not in analytic:
            raise ValueError(f"analytic has no gradient for input {name!r}; it has {sorted(analytic)}")
        if tuple(analytic[name].shape) != tuple(x.shape):
            raise ValueError(f"analytic[{name!r}] has shape {tuple(analytic[name].shape)}, "
                             f"expected the input's shape {tuple(x.shape)}")


def _full(f, inputs, analytic, eps, tiny, report):
    for name, x in inputs.items():
        a_all = to_numpy(analytic[name]).astype(np.float64).reshape(-1)
        n_all = np.empty_like(a_all)
        flat_index = list(np.ndindex(*x.shape)) if x.ndim else [()]
        for j, idx in enumerate(flat_index):
            x0 = x[idx].copy() if x.ndim else x[()].copy()

            def set_point(t, x=x, idx=idx, x0=x0):
                x[idx] = x0 + t
            n_all[j] = _stencil(f, set_point, eps)
            x[idx] = x0                      # restore the exact original value
        err = np.abs(a_all - n_all)
        floor = tiny if tiny is not None else 1e-3 * (np.abs(a_all).max() + np.abs(n_all).max())
        denom = np.maximum(np.abs(a_all) + np.abs(n_all), max(floor, np.finfo(np.float64).tiny))
        rel = err / denom
        k = int(np.argmax(rel)) if rel.size else 0
        report.results.append(InputResult(
            name, float(err.max(initial=0.0)), float(rel.max(initial=0.0)),
            flat_index[k] if rel.size else None,
            float(a_all[k]) if rel.size else 0.0, float(n_all[k]) if rel.size else 0.0))


def _direction(f, inputs, analytic, eps, tiny, n_directions, seed, report, label=None):
    rng = np.random.default_rng(seed)
    for d in range(n_directions):
        originals = {name: x.copy() for name, x in inputs.items()}
        draws = {name: rng.standard_normal(x.shape) for name, x in inputs.items()}
        # one unit vector over all inputs: a step h moves the whole point by exactly h, so the
        # truncation error does not grow with the number of parameters
        norm = np.sqrt(sum(float((u * u).sum()) for u in draws.values())) or 1.0
        dirs = {name: get_array_module(x).asarray(draws[name] / norm) for name, x in inputs.items()}
        a = sum(_scalar((analytic[name] * dirs[name]).sum()) for name in inputs)

        def set_point(t, originals=originals, dirs=dirs):
            for name, x in inputs.items():
                x[...] = originals[name] + t * dirs[name]
        n = _stencil(f, set_point, eps)
        for name, x in inputs.items():
            x[...] = originals[name]
        floor = tiny if tiny is not None else np.finfo(np.float64).tiny
        rel = abs(a - n) / max(abs(a) + abs(n), floor)
        report.results.append(InputResult(label or f"direction {d} (all {len(inputs)} inputs)",
                                          abs(a - n), rel, None, a, n))


def gradcheck(f, inputs: dict, analytic: dict, *, mode: str = "auto", eps: float = 1e-3,
              rtol: float = 1e-7, tiny: float | None = None, n_directions: int = 2,
              seed: int = 0, max_full_elements: int = 512, raise_on_failure: bool = True):
    """Check ``analytic`` gradients of the scalar ``f()`` with respect to ``inputs``.

    Args:
        f: callable with no arguments returning a scalar; it must read ``inputs`` in place.
        inputs: name -> float64 array (perturbed in place, restored exactly).
        analytic: name -> gradient of ``f`` for that input, same shape.
        mode: "full" (every element), "direction" (random directions over all inputs at
            once), or "auto" (full when the inputs hold <= ``max_full_elements`` elements).
        eps: step ``h`` of the five-point stencil.
        rtol: largest accepted relative error.
        tiny: floor of the error's denominator (see the module docstring for the default).
        n_directions: directions tried in "direction" mode.
        seed: seed of the random directions.
        raise_on_failure: raise ``GradcheckError`` with the report when the check fails.

    Returns:
        GradcheckReport with the max absolute and relative error per input (or direction).
    """
    _validate(inputs, analytic)
    if mode not in ("auto", "full", "direction"):
        raise ValueError(f"mode={mode!r} is not known, expected 'auto', 'full' or 'direction'")
    if not eps > 0:
        raise ValueError(f"eps={eps!r} must be > 0")
    total = sum(int(x.size) for x in inputs.values())
    if mode == "auto":
        mode = "full" if total <= max_full_elements else "direction"
    report = GradcheckReport(mode, rtol)
    if mode == "full":
        _full(f, inputs, analytic, eps, tiny, report)
    else:
        _direction(f, inputs, analytic, eps, tiny, n_directions, seed, report)
        if not report.passed and len(inputs) > 1:
            # localise the failure: one direction per input, the others held fixed. An input
            # whose true gradient is ~0 (a key bias: softmax ignores a per-row shift) is judged
            # against the scale of the joint directional derivative, not against its own ~0.
            scale = max(abs(r.analytic) + abs(r.numeric) for r in report.results)
            floor = tiny if tiny is not None else 1e-3 * scale
            for i, name in enumerate(inputs):
                _direction(f, {name: inputs[name]}, analytic, eps, floor, 1, seed + 1000 + i,
                           report, label=f"{name} alone")
    if raise_on_failure and not report.passed:
        raise GradcheckError(report)
    return report


def _op_grads(backward, dy, cache, n_inputs):
    grads = backward(dy, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) < n_inputs:
        raise ValueError(f"backward returned {len(grads)} gradients for {n_inputs} inputs")
    return grads


def jacobian_check(forward, backward, inputs: dict, *, kwargs: dict | None = None,
                   eps: float = 1e-3, rtol: float = 1e-7, tiny: float | None = None,
                   raise_on_failure: bool = True):
    """Compare the whole Jacobian ``dy/dx`` of an op, entry by entry.

    Analytic: row ``j`` of the Jacobian is ``backward(e_j, cache)`` for the unit upstream
    gradient ``e_j`` (one backward call per output element). Numeric: column ``k`` is the
    five-point stencil of the whole output ``y`` along input element ``k`` (four forward
    calls per input element). For small ops only: the cost is outputs x backward calls plus
    4 x inputs forward calls, and it checks every partial derivative, not one projection.
    """
    kwargs = kwargs or {}
    _check_float64(inputs)
    y0, cache = forward(**inputs, **kwargs)
    xp = get_array_module(y0)
    n_out = int(y0.size)
    names = list(inputs)
    analytic = {name: np.empty((n_out, int(inputs[name].size))) for name in names}
    for j in range(n_out):
        e = xp.zeros(y0.shape, dtype=y0.dtype)
        e.reshape(-1)[j] = 1.0
        for name, g in zip(names, _op_grads(backward, e, cache, len(names))):
            analytic[name][j] = to_numpy(g).reshape(-1)
    report = GradcheckReport("jacobian", rtol)
    for name, x in inputs.items():
        numeric = np.empty_like(analytic[name])
        for k, idx in enumerate(np.ndindex(*x.shape) if x.ndim else [()]):
            x0 = x[idx].copy()

            def y_at(t, x=x, idx=idx, x0=x0):
                x[idx] = x0 + t
                return to_numpy(forward(**inputs, **kwargs)[0]).reshape(-1).astype(np.float64)
            numeric[:, k] = ((8.0 * (y_at(eps) - y_at(-eps)) - (y_at(2 * eps) - y_at(-2 * eps)))
                             / (12.0 * eps))
            x[idx] = x0                              # restore the exact original value
        a, n = analytic[name], numeric
        err = np.abs(a - n)
        floor = tiny if tiny is not None else 1e-3 * (np.abs(a).max() + np.abs(n).max())
        rel = err / np.maximum(np.abs(a) + np.abs(n), max(floor, np.finfo(np.float64).tiny))
        j, k = np.unravel_index(int(np.argmax(rel)), rel.shape) if rel.size else (0, 0)
        report.results.append(InputResult(f"d y / d {name}", float(err.max(initial=0.0)),
                                          float(rel.max(initial=0.0)), (int(j), int(k)),
                                          float(a[j, k]) if rel.size else 0.0,
                                          float(n[j, k]) if rel.size else 0.0))
    if raise_on_failure and not report.passed:
        raise GradcheckError(report)
    return report


def check_op(forward, backward, inputs: dict, *, kwargs: dict | None = None,
             seed: int = 0, **gradcheck_kwargs):
    """Gradient-check an op pair ``y, cache = forward(**inputs, **kwargs)``,
    ``grads = backward(dy, cache)``, where ``grads`` lists the gradients of the inputs in
    the order of ``inputs`` (all of them differentiable, float64).

    The scalar checked is ``sum(y * dy)`` with a random upstream gradient ``dy``; its
    gradient is exactly what ``backward(dy, cache)`` must return. ``mode="jacobian"``
    checks every entry of the Jacobian instead (see ``jacobian_check``).
    """
    if gradcheck_kwargs.get("mode") == "jacobian":
        gradcheck_kwargs.pop("mode")
        for unused in ("n_directions", "max_full_elements"):
            gradcheck_kwargs.pop(unused, None)
        return jacobian_check(forward, backward, inputs, kwargs=kwargs, **gradcheck_kwargs)
    kwargs = kwargs or {}
    y, cache = forward(**inputs, **kwargs)
    xp = get_array_module(y)
    dy = xp.asarray(np.random.default_rng(seed).standard_normal(y.shape))
    analytic = dict(zip(inputs, _op_grads(backward, dy, cache, len(inputs))))

    def f():
        return (forward(**inputs, **kwargs)[0] * dy).sum()
    return gradcheck(f, inputs, analytic, seed=seed, **gradcheck_kwargs)
