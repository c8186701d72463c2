"""Op hooks: code that runs around every op's forward and backward, without touching the ops.

Every public forward/backward function in ``minibert.ops`` is decorated with ``@op(name)``.
The decorated function asks the registry, at each call, whether any hook is registered; with
none it calls the op at once (the cost: one test of an empty tuple and one more Python call).
With hooks registered, a call runs::

    for hook in hooks: hook.forward_pre(op, args, kwargs)          # in registration order
    result = the op(*args, **kwargs)
    for hook in reversed hooks: hook.forward_post(op, args, kwargs, result)

(``backward_pre`` / ``backward_post`` for a backward). ``op`` is the op's name (``"linear"``,
``"gelu.bias"``, ...), ``args``/``kwargs`` the call's arguments and ``result`` what the op
returned. The post callbacks run in the reverse order, so a hook registered first wraps the
others, as nested ``with`` blocks do: a timer registered first times the other hooks too.

A hook is any object; each of the four callbacks is optional (a missing one is skipped).
``OpHook`` is a base class with all four doing nothing. Register a hook for a block::

    with minibert.ops.hooks.use(MyHook()):
        out, cache = model.forward(...)

or by hand with ``register(hook)`` / ``unregister(hook)``. ``minibert.ops.trace()`` is such a
hook, and so is the per-op profiler of ``benchmarks/profiling.py``.

Nesting. An op that calls another op inside (``gelu.bias_forward`` on the NumPy path calls
``gelu.forward``) is one op to its caller: the hooks see the outermost call only. So a
pre callback is always followed by its post callback before the next pre of the same hook,
and a hook that times a call can keep its start time in one attribute.

If the op raises, no post callback runs, and the registry is as it was before the call (the
nesting depth is restored). The registry is one per process: hooks see the ops of every
thread, and are not meant for ops running on several threads at once.
"""
from __future__ import annotations

import contextlib
import functools

PHASES = ("forward", "backward")

# The registered hooks (a tuple: what the fast path tests) and, per phase, the bound pre and
# post callbacks that exist, prepared at registration so that a call does no lookups.
_hooks: tuple = ()
_callbacks: dict = {"forward": ((), ()), "backward": ((), ())}
_depth = 0                       # > 0 while a hooked op runs: the calls inside are not seen


class OpHook:
    """A hook whose four callbacks do nothing: subclass it and define the ones you need.

    ``forward_pre(op, args, kwargs)`` and ``backward_pre(op, args, kwargs)`` run before the
    op; ``forward_post(op, args, kwargs, result)`` and ``backward_post(...)`` after it."""

    def forward_pre(self, op, args, kwargs):
        pass

    def forward_post(self, op, args, kwargs, result):
        pass

    def backward_pre(self, op, args, kwargs):
        pass

    def backward_post(self, op, args, kwargs, result):
        pass


def registered() -> tuple:
    """The registered hooks, in the order their pre callbacks run."""
    return _hooks


def _callback(hook, name):
    """``hook``'s bound callback ``name``, or None where it has none or keeps OpHook's."""
    f = getattr(hook, name, None)
    if f is None or getattr(type(hook), name, None) is getattr(OpHook, name):
        return None
    if not callable(f):
        raise TypeError(f"hook={hook!r} has {name}={f!r}: expected a callable")
    return f


def _set(hooks: tuple) -> None:
    global _hooks, _callbacks
    callbacks = {}
    for phase in PHASES:
        pre = tuple(f for f in (_callback(h, phase + "_pre") for h in hooks) if f)
        post = tuple(f for f in (_callback(h, phase + "_post") for h in reversed(hooks)) if f)
        callbacks[phase] = (pre, post)
    _callbacks = callbacks
    _hooks = hooks


def register(hook) -> None:
    """Add ``hook`` after the registered ones; a hook can be registered once."""
    if any(h is hook for h in _hooks):
        raise ValueError(f"hook={hook!r} is already registered")
    _set((*_hooks, hook))


def unregister(hook) -> None:
    """Remove ``hook``; the others keep their order."""
    if not any(h is hook for h in _hooks):
        raise ValueError(f"hook={hook!r} is not registered")
    _set(tuple(h for h in _hooks if h is not hook))


@contextlib.contextmanager
def use(hook):
    """Register ``hook`` for the block and remove it at its end, whatever happens in it.
    Yields the hook."""
    register(hook)
    try:
        yield hook
    finally:
        unregister(hook)


def _call_hooked(name, phase, fn, args, kwargs):
    """Run ``fn`` between the registered hooks' callbacks (the slow path of ``op``)."""
    global _depth
    if _depth:                                     # inside another op: part of its call
        return fn(*args, **kwargs)
    pre, post = _callbacks[phase]
    _depth += 1
    try:
        for f in pre:
            f(name, args, kwargs)
        result = fn(*args, **kwargs)
    finally:
        _depth -= 1
    for f in post:
        f(name, args, kwargs, result)
    return result


def op(name: str, phase: str | None = None):
    """Decorator: the function is op ``name``'s forward or backward and calls the hooks.

    ``phase`` ("forward" or "backward") defaults to the function's name: a name ending in
    ``backward`` is a backward, any other a forward.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name={name!r}: expected the op's name, a non-empty string")
    if phase is not None and phase not in PHASES:
        raise ValueError(f"phase={phase!r}: expected one of {PHASES} or None")

    def decorate(fn):
        ph = phase or ("backward" if fn.__name__.endswith("backward") else "forward")

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if not _hooks:                         # the common case: nothing to call
                return fn(*args, **kwargs)
            return _call_hooked(name, ph, fn, args, kwargs)
        call.op_name, call.phase = name, ph
        return call
    return decorate
