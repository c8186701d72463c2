"""Embedding lookup: ``y = weight[ids]``.

Shapes: ids (...) integer in [0, V), weight (V, H), y (...) + (H,). Flatten ids to N
positions for the math below; each position copies one row of the table.

Backward. With ``dy = dL/dy`` of shape (N, H):

    y[n, h]       = weight[ids[n], h]
    dweight[v, h] = sum_{n : ids[n] = v} dy[n, h]              (V, H)

A row that occurs twice receives both upstream gradients, summed; a row that never occurs
gets zero. The sum over repeated ids is a scatter-add: ``dweight[ids] += dy`` with NumPy's
buffered fancy indexing would keep only the last write of a repeated id, so it goes through
``backend.scatter_add`` (``np.add.at``; on the GPU a sorted segment sum, deterministic). ``ids`` is not
differentiable; backward returns ``dweight`` only.
"""
from __future__ import annotations

from ..backend import get_array_module, scatter_add
from ..validation import require
from . import hooks


def _validate(ids, weight, name):
    if weight.ndim != 2:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected (V, H)")
    if not hasattr(ids, "dtype") or ids.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {getattr(ids, 'dtype', type(ids).__name__)}, "
                        "expected an integer array of token indices")
    V = weight.shape[0]
    if ids.size == 0:
        return
    xp = get_array_module(ids)

    def error():
        value = int(ids[(ids < 0) | (ids >= V)].ravel()[0])  # the first bad id in C order
        return ValueError(f"{name} contains {value}, out of range: expected 0 <= {name} < {V} "
                          f"(the number of rows of weight {tuple(weight.shape)}), "
                          f"got {name} in [{int(xp.min(ids))}, {int(xp.max(ids))}]")
    # on the GPU inside a model's forward: read once with the model's other checks
    require((ids >= 0) & (ids < V), error)


@hooks.op("embedding")
def forward(ids, weight, *, name="ids"):
    """``y = weight[ids]``; returns ``(y, cache)``.

    Args:
        ids: integer array (...) of row indices in [0, V).
        weight: the table (V, H).
        name: how ``ids`` is called in error messages ("input_ids", "token_type_ids", ...).
    """
    xp = get_array_module(weight)
    if hasattr(ids, "dtype"):
        ids = xp.asarray(ids)          # NumPy ids with a CuPy table move to the GPU
    _validate(ids, weight, name)
    y = weight[ids]                                   # (..., H)
    return y, (ids, weight.shape)


@hooks.op("embedding")
def backward(dy, cache, out=None):
    """Returns ``dweight`` (V, H): the upstream rows summed into the rows they came from.

    With ``out`` (a (V, H) array, e.g. the parameter's view of a gradient buffer) the rows
    are added into ``out`` in place and ``out`` is returned: no (V, H) array is allocated,
    filled with zeros and added afterwards (for BERT's 30522 x 768 table, 94 MB per step
    for 1024 used rows).
    """
    ids, (V, H) = cache
    xp = get_array_module(dy)
    if out is None:
        out = xp.zeros((V, H), dtype=dy.dtype)        # rows that were never used stay 0
    elif tuple(out.shape) != (V, H):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected the table's {(V, H)}")
    # undoes y = weight[ids]: repeated ids accumulate (unbuffered scatter-add)
    scatter_add(out, ids.reshape(-1), dy.reshape(-1, H))   # (N,) ids, (N, H) rows
    return out
