"""The gradient checker itself: it passes right gradients, catches wrong ones, names the
culprit, restores its inputs bit for bit, and refuses float32."""
import numpy as np
import pytest

from minibert import GradcheckError, check_op, gradcheck
from minibert.ops import layernorm, linear


def _linear_case(rng):
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    dy = rng.standard_normal((4, 3))
    y, cache = linear.forward(x, w, b)
    dx, dw, db = linear.backward(dy, cache)
    f = lambda: (linear.forward(x, w, b)[0] * dy).sum()  # noqa: E731
    return f, {"x": x, "weight": w, "bias": b}, {"x": dx, "weight": dw, "bias": db}


@pytest.mark.parametrize("mode", ["full", "direction"])
def test_right_gradients_pass(rng, mode):
    f, inputs, grads = _linear_case(rng)
    before = {k: v.copy() for k, v in inputs.items()}
    report = gradcheck(f, inputs, grads, mode=mode)
    assert report.passed and report.max_rel_err < 1e-9
    for k in inputs:                                   # restored exactly
        assert np.array_equal(inputs[k], before[k])


def test_full_mode_names_the_wrong_element(rng):
    f, inputs, grads = _linear_case(rng)
    grads["weight"] = grads["weight"].copy()
    grads["weight"][2, 1] += 1e-3
    with pytest.raises(GradcheckError) as e:
        gradcheck(f, inputs, grads, mode="full")
    text = str(e.value)
    assert "FAILED" in text and "weight" in text and "(2, 1)" in text
    rows = {r.name: r for r in e.value.report.results}
    assert rows["x"].max_rel_err < 1e-9 and rows["weight"].max_rel_err > 1e-5


def test_direction_mode_localises_the_wrong_input(rng):
    f, inputs, grads = _linear_case(rng)
    grads["bias"] = grads["bias"] * 1.01          # a 1% error in one small input
    with pytest.raises(GradcheckError) as e:
        gradcheck(f, inputs, grads, mode="direction")
    rows = {r.name: r for r in e.value.report.results}
    assert rows["bias alone"].max_rel_err > 1e-4
    assert rows["x alone"].max_rel_err < 1e-7 and rows["weight alone"].max_rel_err < 1e-7


def test_missing_transpose_is_caught(rng):
    """A classic backward bug: dW computed as x^T dy instead of dy^T x (square case)."""
    x, w = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    dy = rng.standard_normal((4, 4))
    with pytest.raises(GradcheckError):
        gradcheck(lambda: (linear.forward(x, w)[0] * dy).sum(), {"weight": w}, {"weight": x.T @ dy})


def test_check_op_report_without_raising(rng):
    x = rng.standard_normal((3, 6))
    report = check_op(layernorm.forward, layernorm.backward,
                      {"x": x, "weight": rng.standard_normal(6), "bias": rng.standard_normal(6)},
                      raise_on_failure=False)
    assert report.passed and report.mode == "full"
    assert "weight" in str(report) and "bias" in str(report)


def test_bad_arguments(rng):
    f, inputs, grads = _linear_case(rng)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(f, {"x": inputs["x"].astype(np.float32)}, {"x": grads["x"]})
    with pytest.raises(ValueError, match="no gradient for input 'bias'"):
        gradcheck(f, inputs, {"x": grads["x"], "weight": grads["weight"]})
    with pytest.raises(ValueError, match="shape"):
        gradcheck(f, inputs, {**grads, "bias": grads["bias"][:2]})
    with pytest.raises(ValueError, match="mode='fast'"):
        gradcheck(f, inputs, grads, mode="fast")


def test_jacobian_mode_names_the_wrong_entry(rng):
    """A backward that is right for most upstream gradients but wrong in one output row."""
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))

    def bad_backward(dy, cache):
        dx, dw, _ = linear.backward(dy, cache)
        dx = dx.copy()
        dx[1, 2] += 0.5 * dy[1, 0]             # a wrong partial d y[1, 0] / d x[1, 2]
        return dx, dw

    with pytest.raises(GradcheckError) as e:
        check_op(linear.forward, bad_backward, {"x": x, "weight": w}, mode="jacobian")
    rows = {r.name: r for r in e.value.report.results}
    # output element (1, 0) is flat index 2, input element (1, 2) is flat index 6
    assert rows["d y / d x"].where == (2, 6) and rows["d y / d weight"].max_rel_err < 1e-9
