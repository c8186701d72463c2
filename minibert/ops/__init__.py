"""The ops: one file each, pure functions, no state.

Every op is a pair ``y, cache = forward(x, ...)`` and ``grads = backward(dy, cache)``.
``backward`` returns fresh arrays (one per differentiable input, in the order of
``forward``'s arguments) and never writes into its cache. Each module docstring derives the
gradient with shapes, and each backward line names the forward line it undoes.
"""
from . import (attention, cross_entropy, dropout, embedding, gelu, layernorm, linear,
               softmax, tanh)

__all__ = ["attention", "cross_entropy", "dropout", "embedding", "gelu", "layernorm", "linear",
           "softmax", "tanh"]
