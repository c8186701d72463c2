"""The ops: one file each, pure functions, no state.

Every op is a pair ``y, cache = forward(x, ...)`` and ``grads = backward(dy, cache)``.
``backward`` returns fresh arrays (one per differentiable input, in the order of
``forward``'s arguments) and never writes into its cache. Each module docstring derives the
gradient with shapes, and each backward line names the forward line it undoes.

Fast kernels. On NumPy arrays of float32 or float64 some ops hand their work to a fused
Numba kernel in ``minibert.kernels`` (attention, layernorm, GELU with its bias, dropout, the
linear layer's products on the kernel threads, the cross-entropy; the optimizer does the same
for AdamW). The kernel computes the same function
with fewer passes over memory; the NumPy code in the op stays the reference it is tested
against. A kernel's forward returns a ``Fused`` cache, which the op's backward recognises and
hands back to the kernel (the switch and ``Fused`` live in ``switch.py``). To study or step
through the readable code instead, switch the kernels off for the process or for a block::

    MINIBERT_READABLE_OPS=1 minibert pretrain ...        # environment, read at import

    with minibert.ops.readable_ops():                    # or in code
        out, cache = model.forward(...)
        model.backward(cache)                            # caches from inside the block

Hooks. Every op's forward and backward calls the registered op hooks (``hooks.py``):
``with minibert.ops.hooks.use(hook):`` runs ``hook``'s callbacks around each op call of the
block, with no op replaced. Tracing is one such hook: ``with minibert.ops.trace(
params=model.params) as t:`` records every op's forward and backward call in the order they
run (``tracing.py``); ``t.format()`` is the table that ``minibert trace`` prints.
"""
from . import attention, cross_entropy, dropout, embedding, gelu, hooks, layernorm, linear, softmax, tanh
from .switch import READABLE_ENV, Fused, readable_ops, set_readable_ops, use_cuda_kernel, use_kernel
from .tracing import Trace, TraceEvent, trace

__all__ = ["attention", "cross_entropy", "dropout", "embedding", "gelu", "layernorm", "linear",
           "softmax", "tanh", "hooks", "Fused", "readable_ops", "set_readable_ops", "use_kernel",
           "use_cuda_kernel", "READABLE_ENV", "trace", "Trace", "TraceEvent"]
