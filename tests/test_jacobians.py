"""Every op's whole Jacobian, entry by entry, in float64 (``check_op(..., mode="jacobian")``):
rows from ``backward`` with unit upstream gradients, columns from central differences."""
import numpy as np
import pytest

from minibert import check_op
from minibert.ops import attention, cross_entropy, dropout, embedding, gelu, layernorm, linear, softmax, tanh


def _cases(xp, rng):
    def a(*shape, scale=1.0):
        return xp.asarray(rng.standard_normal(shape) * scale)
    mask = xp.asarray(np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))
    return {
        "embedding": (embedding, {"weight": a(6, 3)}, {"ids": xp.asarray(np.array([[1, 5, 1], [0, 2, 2]]))}),
        "linear": (linear, {"x": a(2, 3, 4), "weight": a(5, 4), "bias": a(5)}, {}),
        "layernorm": (layernorm, {"x": a(3, 6), "weight": 1 + a(6, scale=0.1), "bias": a(6)}, {"eps": 1e-12}),
        "gelu": (gelu, {"x": a(4, 5, scale=2.0)}, {}),
        "gelu_tanh": (gelu, {"x": a(4, 5, scale=2.0)}, {"approximate": "tanh"}),
        "softmax": (softmax, {"x": a(3, 7, scale=2.0)}, {}),
        "softmax_axis0": (softmax, {"x": a(5, 3, scale=2.0)}, {"axis": 0}),
        "tanh": (tanh, {"x": a(4, 5)}, {}),
        "dropout": (dropout, {"x": a(4, 6)}, {"p": 0.4, "seed": 11, "offset": 2}),
        "cross_entropy": (cross_entropy, {"logits": a(5, 4, scale=2.0)},
                          {"labels": xp.asarray(np.array([3, -100, 0, 1, 1])),
                           "weights": xp.asarray(np.array([1.0, 1.0, 0.5, 2.0, 0.0]))}),
        # the third sequence is all padding: its rows must have a zero Jacobian
        "attention": (attention, {"q": a(3, 2, 5, 3), "k": a(3, 2, 5, 3), "v": a(3, 2, 5, 3)},
                      {"attention_mask": mask, "dropout_p": 0.2, "seed": 5, "offset": 9, "training": True}),
    }


@pytest.mark.parametrize("case", ["embedding", "linear", "layernorm", "gelu", "gelu_tanh", "softmax",
                                  "softmax_axis0", "tanh", "dropout", "cross_entropy", "attention"])
def test_full_jacobian(xp, rng, case):
    op, inputs, kwargs = _cases(xp, rng)[case]
    report = check_op(op.forward, op.backward, inputs, kwargs=kwargs, mode="jacobian")
    assert report.mode == "jacobian" and report.passed
