"""Softmax cross-entropy over classes, averaged over the rows that count (weighted).

Shapes: logits (N, C), labels (N,) integer, weights (N,) or None, loss a 0-d array.
A row counts when its label is not ``ignore_index``; its weight is ``w_n`` (1 when
``weights`` is None) and ``c_n = [label_n != ignore_index]``:

    lse_n = log sum_k exp(logits[n, k])                        (N,)  via the max-shifted form
    l_n   = lse_n - logits[n, label_n]                         (N,)  -log softmax at the label
    W     = sum_n c_n w_n                                      ()
    loss  = sum_n c_n w_n l_n / W                              ()

With ``weights=None`` this is ``torch.nn.functional.cross_entropy(..., ignore_index=...)``
with the default mean reduction. The per-row ``weights`` are what BERT's pretraining calls
``masked_lm_weights`` (0 for padded prediction slots); they are not torch's per-class
``weight``.

No row counts (W = 0): the loss is 0 and the gradient 0. Hugging Face / torch return NaN
there (0/0); minibert returns a finite 0 so that a batch without masked tokens cannot
poison the parameters.

Backward. With ``p_n = softmax(logits_n)`` (C,) and ``dl_n / dlogits[n, k] = p_n[k] -
[k == label_n]``, and ``dloss`` the upstream scalar:

    dlogits[n, k] = dloss * c_n w_n / W * (p_n[k] - onehot(label_n)[k])       (N, C)

Ignored rows (c_n = 0) and zero-weight rows get exactly zero gradient. ``labels`` and
``weights`` are not differentiable; backward returns ``dlogits`` only.

Fast path. On NumPy float32/float64 logits (``minibert.ops.use_kernel``) the (N, C) work
runs in ``minibert.kernels.cross_entropy_cpu``: max, sum of exps and l_n in fused row passes,
saving the row log-sum-exp instead of the (N, C) probabilities, and a backward that
recomputes them in the pass that writes dlogits (a ``Fused`` cache). The weights, the
ignored rows and W are computed by the same lines below on both paths. The code below stays
the reference, and runs alone under ``minibert.ops.readable_ops()``.
"""
from __future__ import annotations

import numbers

from ..backend import get_array_module
from ..validation import require
from . import hooks
from .switch import Fused, use_kernel


def _validate(logits, labels, weights, ignore_index, xp):
    if logits.ndim != 2:
        raise ValueError(f"logits has shape {tuple(logits.shape)}, expected (N, C)")
    N, C = logits.shape
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index={ignore_index!r} has type {type(ignore_index).__name__}, "
                        "expected an integer")
    if not hasattr(labels, "dtype") or labels.dtype.kind not in "iu":
        raise TypeError(f"labels has dtype {getattr(labels, 'dtype', type(labels).__name__)}, "
                        "expected an integer array of class indices")
    labels = xp.asarray(labels)
    if tuple(labels.shape) != (N,):
        raise ValueError(f"labels has shape {tuple(labels.shape)}, expected ({N},) to match "
                         f"logits {tuple(logits.shape)}")
    bad = ((labels < 0) | (labels >= C)) & (labels != ignore_index)

    def label_error():
        value = int(labels[bad][0])        # the first bad label, to quote it
        return ValueError(f"labels contains {value}, out of range: expected 0 <= labels < {C} "
                          f"(the number of classes of logits {tuple(logits.shape)}) or "
                          f"labels == ignore_index ({ignore_index})")
    # on the GPU inside a model's forward: read once with the model's other checks
    if N:
        require(~bad, label_error)
    if weights is not None:
        weights = xp.asarray(weights)
        if tuple(weights.shape) != (N,):
            raise ValueError(f"weights has shape {tuple(weights.shape)}, expected ({N},) to match "
                             f"logits {tuple(logits.shape)}")
        if N:
            require(weights >= 0, lambda: ValueError(f"weights contains {float(xp.min(weights))}, "
                                                     "expected weights >= 0"))
        weights = weights.astype(logits.dtype, copy=False)
    return labels, weights


@hooks.op("cross_entropy")
def forward(logits, labels, weights=None, ignore_index=-100):
    """Weighted mean cross-entropy of ``logits`` (N, C) at ``labels`` (N,); returns
    ``(loss, cache)`` with ``loss`` a 0-d array of the logits' dtype.

    Rows whose label equals ``ignore_index`` do not count; ``weights`` (N,) weighs the others.
    """
    xp = get_array_module(logits)
    labels, weights = _validate(logits, labels, weights, ignore_index, xp)
    N, C = logits.shape
    counts = labels != ignore_index                           # (N,) bool
    safe = xp.where(counts, labels, 0)                        # (N,) a valid index on ignored rows
    w = counts.astype(logits.dtype)                           # (N,) c_n
    if weights is not None:
        w = w * weights                                       # (N,) c_n w_n
    total = xp.sum(w)                                         # W
    # W = 0 -> every c_n w_n is 0, so dividing by 1 instead gives loss 0 and gradient 0
    scale = w / xp.where(total > 0, total, 1)                 # (N,) c_n w_n / W
    if use_kernel(logits) and C > 0:
        from ..kernels import cross_entropy_cpu  # lazy: Numba takes a while to import
        nll, row_max, row_sum = cross_entropy_cpu.forward(logits, safe)   # (N,) float64 each
        # the weighted sum in float64 too, then one rounding to the logits' dtype
        loss = xp.asarray(xp.sum(scale * nll), dtype=logits.dtype)
        return loss, Fused(cross_entropy_cpu.backward, (logits, safe, row_max, row_sum, scale))
    z = logits - xp.max(logits, axis=1, keepdims=True)        # (N, C) every exponent <= 0
    e = xp.exp(z)
    s = xp.sum(e, axis=1, keepdims=True)                      # (N, 1) in [1, C]
    probs = e / s                                             # (N, C) softmax
    rows = xp.arange(N)
    nll = xp.log(s[:, 0]) - z[rows, safe]                     # (N,) l_n = lse_n - logits[n, label_n]
    loss = xp.asarray(xp.sum(scale * nll), dtype=logits.dtype)  # () 0-d, not a NumPy scalar
    return loss, (probs, safe, scale)


@hooks.op("cross_entropy")
def backward(dloss, cache):
    """Returns ``dlogits`` (N, C)."""
    if isinstance(cache, Fused):
        return cache.backward(dloss, *cache.saved)
    probs, safe, scale = cache
    xp = get_array_module(probs)
    N = probs.shape[0]
    # an upstream 0-d float64 array would promote float32 logits to float64
    dloss = xp.asarray(dloss, dtype=probs.dtype)
    # undoes nll = lse - logits[label]: softmax minus the one-hot of the label
    g = probs * scale[:, None]                                # (N, C)
    g[xp.arange(N), safe] -= scale                            # writes into g, a fresh array
    # undoes loss = sum(scale * nll)
    return dloss * g
