"""The ops: one file each, pure functions, no state.

Every op is a pair ``y, cache = forward(x, ...)`` and ``grads = backward(dy, cache)``.
``backward`` returns fresh arrays (one per differentiable input, in the order of
``forward``'s arguments) and never writes into its cache. Each module docstring derives the
gradient with shapes, and each backward line names the forward line it undoes.
"""
from . import linear  # noqa: F401
from . import attention  # noqa: F401
from . import cross_entropy  # noqa: F401
from . import dropout  # noqa: F401
from . import embedding  # noqa: F401
from . import gelu  # noqa: F401
from . import layernorm  # noqa: F401
from . import softmax  # noqa: F401
from . import tanh  # noqa: F401
