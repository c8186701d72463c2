"""AdamW in two variants, learning-rate schedules and global-norm gradient clipping.

Every parameter of a model lives in one flat buffer (``store.data``, see params.py) with a
twin gradient buffer (``store.grad``), so the optimizer is a handful of vectorised
expressions over two 1-D arrays, whatever the model: no loop over tensors. Weight decay is
the only thing that depends on a parameter's name; it becomes a flat boolean mask built once.

The two AdamW variants
----------------------
Both keep running averages of the gradient g (first moment m) and of its square (second
moment v), and divide one by the square root of the other, so that every coordinate moves
by about lr whatever the scale of its gradient. They differ in two places, one of which
changes the numbers::

    "bert": Devlin et al.'s AdamWeightDecayOptimizer        "torch": torch.optim.AdamW
    ------------------------------------------------        ------------------------------------
                                                            p <- p (1 - lr wd)       (decay first)
    m <- b1 m + (1 - b1) g                                  m <- m + (1 - b1) (g - m)   (= same m)
    v <- b2 v + (1 - b2) g^2                                v <- b2 v + ((1 - b2) g) g
    u <- m / (sqrt(v) + eps)                                u <- m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    u <- u + wd p                    (decay in the update)  p <- p - lr / (1 - b1^t) u
    p <- p - lr u

(``wd`` only where decay applies; t counts steps from 1; eps 1e-6 as BERT; torch's own
default is 1e-8, pass ``eps`` to change it.)

1. Bias correction. m and v start at zero, so early on they are shrunk towards zero by the
   factors 1 - b1^t and 1 - b2^t. torch divides them back out; BERT does not, so its step
   is the corrected one times (1 - b1^t) / sqrt(1 - b2^t): 0.1 / 0.032 = 3.2 at t = 1,
   6.6 at t = 12, 3.2 at t = 100, and close to 1 only once b2^t is small (1.26 at
   t = 1000, 1.003 at t = 5000). BERT's learning-rate warmup (10,000 steps) covers
   most of these oversized early steps.
2. Where the decay enters. BERT adds wd p to the normalised update, which lr then scales;
   torch multiplies p by (1 - lr wd) before the Adam step. As the Adam step does not read
   p, both give p - lr wd p - lr u: the same numbers up to rounding. The decay is also
   the same size in both (lr wd p per step), so only point 1 changes the trajectory.

Both decouple the decay from the moments (Loshchilov and Hutter's AdamW): wd p never enters
m or v, unlike L2 regularisation added to the loss.

Matching torch to rounding
--------------------------
The "torch" variant follows the order of operations of torch 2.13's single-tensor
implementation (``foreach=False``): decay, then ``exp_avg.lerp_(g, 1 - b1)`` (which for a
weight below 1/2 computes m + w (g - m), otherwise g - (g - m)(1 - w)), then
``exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)``, denominator ``sqrt(v) / sqrt(bc2) + eps``
and ``p.addcdiv_(m, denom, value=-lr / bc1)`` = p + (-lr / bc1) m / denom. torch's CPU
kernels fuse the multiply-adds of lerp and addcmul into one FMA (one rounding instead of
two); NumPy has no FMA, so the results agree to an ulp or so per operation, not bit for bit.

The "bert" variant follows the TF code's expressions and their order exactly.

Fast path. When the buffers are NumPy float32/float64 arrays (``minibert.ops.use_kernel``),
``step`` hands the update to ``minibert.kernels.adamw_cpu``: the same operations in the
same order and dtypes, one pass over the flat buffer instead of a dozen, with results
equal to the code below bit for bit (tested). The code below stays the reference, and
runs under ``minibert.ops.readable_ops()``.

Schedules and clipping
----------------------
``LRSchedule`` gives the learning rate of each step (0-based: the rate the step-th update
uses) as base_lr times a multiplier: linear warmup from 0 then linear decay to 0 at
total_steps (Hugging Face's get_linear_schedule_with_warmup, BERT's schedule), constant, or
constant after a linear warmup. ``clip_grad_norm`` rescales the whole gradient when its
global L2 norm exceeds a bound, as torch.nn.utils.clip_grad_norm_.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import get_array_module, to_numpy
from .ops import use_kernel

VARIANTS = ("bert", "torch")
SCHEDULES = ("linear_warmup_linear_decay", "constant", "constant_with_warmup")
STATE_KEYS = ("t", "m", "v", "lr", "beta1", "beta2", "eps", "weight_decay", "variant",
              "decay_mask")


# ---------------------------------------------------------------------------- validation
def _real(name, value):
    """``value`` as a Python float; TypeError for bools, strings and other non-numbers."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        if not (isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "fiu"):
            raise TypeError(f"{name}={value!r} has type {type(value).__name__}, expected a real number")
    return float(value)


def _check_lr(lr, name="lr"):
    lr = _real(name, lr)
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"{name}={lr!r} is invalid, expected a finite number >= 0")
    return lr


def _check_hparams(lr, betas, eps, weight_decay, variant):
    """Validated (lr, beta1, beta2, eps, weight_decay, variant); errors name the argument."""
    lr = _check_lr(lr)
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ValueError(f"betas={betas!r} is invalid, expected a pair (beta1, beta2)")
    b1, b2 = (_real(f"betas[{i}]", b) for i, b in enumerate(betas))
    for i, b in enumerate((b1, b2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"betas[{i}]={b!r} is invalid, expected 0 <= beta < 1")
    eps = _real("eps", eps)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps={eps!r} is invalid, expected a finite number > 0")
    weight_decay = _real("weight_decay", weight_decay)
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay={weight_decay!r} is invalid, expected a finite number >= 0")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown, expected one of {VARIANTS}")
    return lr, b1, b2, eps, weight_decay, variant


# ---------------------------------------------------------------------------- AdamW
class AdamW:
    """AdamW over a flat parameter buffer, in BERT's variant or torch's (see the module doc).

    Args:
        store: the model's ``FlatParams`` (``model.store``), or any object with ``data`` and
            ``grad`` (1-D float arrays of one dtype and size, NumPy or CuPy) and ``offsets``
            (name -> (start, stop) in them). The optimizer reads ``store.grad`` and updates
            ``store.data`` in place.
        lr: the learning rate used when ``step()`` is not given one.
        betas: (b1, b2), the decay rates of the first and second moment averages.
        eps: added to the denominator; 1e-6 as BERT (torch's default is 1e-8).
        weight_decay: decoupled weight decay rate wd.
        variant: "bert" (no bias correction, decay added to the update) or "torch".
        no_decay: a parameter whose name contains any of these substrings gets no weight
            decay. The default excludes biases and LayerNorm gains, as BERT (LayerNorm
            biases end in "bias"); ``()`` decays everything.

    Attributes:
        t: steps taken. m, v: the moment buffers (flat, the parameters' dtype and device).
        decay_mask: flat booleans, True where weight decay applies.
    """

    def __init__(self, store, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 variant="bert", no_decay=("bias", "LayerNorm.weight")):
        for attr in ("data", "grad", "offsets"):
            if not hasattr(store, attr):
                raise TypeError(f"store of type {type(store).__name__} has no attribute {attr!r}, "
                                "expected a FlatParams (model.store) with data, grad and offsets")
        data, grad = store.data, store.grad
        xp = get_array_module(data)
        if getattr(data, "ndim", None) != 1 or np.dtype(data.dtype).kind != "f":
            raise ValueError(f"store.data has shape {getattr(data, 'shape', None)} and dtype "
                             f"{getattr(data, 'dtype', None)}, expected a 1-D float array")
        if (get_array_module(grad) is not xp or grad.shape != data.shape
                or grad.dtype != data.dtype):
            raise ValueError(f"store.grad has shape {grad.shape} and dtype {grad.dtype} "
                             f"({type(grad).__module__}), expected {data.shape} {data.dtype} "
                             f"on the same device as store.data")
        if isinstance(no_decay, str) or not all(isinstance(s, str) for s in no_decay):
            raise TypeError(f"no_decay={no_decay!r} is invalid, expected a tuple of name "
                            "substrings such as ('bias', 'LayerNorm.weight')")
        (self.lr, self.beta1, self.beta2, self.eps, self.weight_decay,
         self.variant) = _check_hparams(lr, betas, eps, weight_decay, variant)
        self.store, self.data, self.grad, self.xp = store, data, grad, xp
        self.no_decay = tuple(no_decay)

        # built once on the host from the names, then moved to the parameters' device
        mask = np.zeros(data.shape[0], dtype=bool)
        for name, (start, stop) in store.offsets.items():
            if not 0 <= start <= stop <= data.shape[0]:
                raise ValueError(f"store.offsets[{name!r}] = {(start, stop)} lies outside the "
                                 f"flat buffer of {data.shape[0]} elements")
            mask[start:stop] = not any(s in name for s in self.no_decay)
        self.decay_mask = xp.asarray(mask)
        self.m = xp.zeros_like(data)
        self.v = xp.zeros_like(data)
        self.t = 0

    # ------------------------------------------------------------------ the update
    def step(self, lr=None):
        """One AdamW update of ``store.data`` from ``store.grad``, in place.

        ``lr`` is the learning rate of this step (a schedule's value); ``None`` uses
        ``self.lr``. Returns nothing; ``self.t`` counts the steps taken.
        """
        lr = self.lr if lr is None else _check_lr(lr)
        xp, p, g, m, v = self.xp, self.data, self.grad, self.m, self.v
        b1, b2, eps, wd = self.beta1, self.beta2, self.eps, self.weight_decay
        self.t += 1
        if use_kernel(p, g, m, v):
            from .kernels import adamw_cpu  # lazy: Numba takes a while to import
            if self.variant == "bert":
                adamw_cpu.step_bert(p, g, m, v, self.decay_mask, b1, b2, eps, wd, lr)
            else:
                adamw_cpu.step_torch(p, g, m, v, self.decay_mask, b1, b2, eps, wd, lr, self.t)
            return
        if self.variant == "bert":
            m *= b1
            m += (1.0 - b1) * g                         # b1 m + (1 - b1) g
            v *= b2
            v += (1.0 - b2) * (g * g)                   # b2 v + (1 - b2) g^2
            update = m / (xp.sqrt(v) + eps)             # no bias correction
            if wd != 0.0:
                # decay joins the update, computed from p before this step
                update = xp.where(self.decay_mask, update + wd * p, update)
            p -= lr * update
            return

        # "torch": decoupled decay first, with the factor rounded once from (1 - lr wd)
        if wd != 0.0:
            p[...] = xp.where(self.decay_mask, p * (1.0 - lr * wd), p)
        w = 1.0 - b1
        if abs(w) < 0.5:                                # torch's lerp, both of its branches
            m += w * (g - m)
        else:
            m[...] = g - (g - m) * (1.0 - w)
        v *= b2
        v += ((1.0 - b2) * g) * g                       # addcmul: (value * g) * g
        bias_correction1 = 1.0 - b1 ** self.t
        bias_correction2 = 1.0 - b2 ** self.t
        step_size = lr / bias_correction1
        denom = xp.sqrt(v) / bias_correction2 ** 0.5 + eps
        p += (-step_size * m) / denom                   # addcdiv: (value * m) / denom

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything that decides the next steps: NumPy copies of m, v and the decay mask,
        the step count t and the hyper-parameters (Python scalars), ready for ``np.savez``."""
        return dict(t=int(self.t), m=to_numpy(self.m).copy(), v=to_numpy(self.v).copy(),
                    lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                    weight_decay=self.weight_decay, variant=self.variant,
                    decay_mask=to_numpy(self.decay_mask).copy())

    def load_state_dict(self, state: dict):
        """Restore a ``state_dict()`` (also as read back from an .npz: 0-d arrays for the
        scalars), so that the following steps are bit for bit those of the saved run.

        The hyper-parameters are restored too, as torch does. The decay mask is not: it
        follows from the parameter names, and a different one means the checkpoint belongs
        to another model or another ``no_decay``, which is an error. Nothing is changed
        unless every check passes.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state has type {type(state).__name__}, expected a dict from state_dict()")
        missing = [k for k in STATE_KEYS if k not in state]
        unexpected = [k for k in state if k not in STATE_KEYS]
        if missing or unexpected:
            raise ValueError(f"optimizer state does not match: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        n, dtype = self.data.shape[0], self.data.dtype
        moments = {}
        for key in ("m", "v"):
            a = np.asarray(to_numpy(state[key]))
            if a.shape != (n,) or a.dtype != dtype:
                raise ValueError(f"state[{key!r}] has shape {a.shape} and dtype {a.dtype}, "
                                 f"expected ({n},) {dtype} (the parameters' size and dtype)")
            moments[key] = a
        mask = np.asarray(to_numpy(state["decay_mask"]))
        if mask.shape != (n,) or mask.dtype != bool:
            raise ValueError(f"state['decay_mask'] has shape {mask.shape} and dtype {mask.dtype}, "
                             f"expected ({n},) bool")
        if not np.array_equal(mask, to_numpy(self.decay_mask)):
            raise ValueError(f"state['decay_mask'] differs from this optimizer's in "
                             f"{int(np.sum(mask != to_numpy(self.decay_mask)))} elements: the "
                             f"state was saved for other parameters or another no_decay "
                             f"(here {self.no_decay})")
        t = np.asarray(state["t"])
        if t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
            raise ValueError(f"state['t']={state['t']!r} is invalid, expected an integer >= 0")
        variant = state["variant"]
        variant = str(variant) if isinstance(variant, (str, np.ndarray, np.str_)) else variant
        hparams = _check_hparams(state["lr"], (state["beta1"], state["beta2"]), state["eps"],
                                 state["weight_decay"], variant)

        (self.lr, self.beta1, self.beta2, self.eps, self.weight_decay,
         self.variant) = hparams
        self.t = int(t)
        self.m[...] = self.xp.asarray(moments["m"])
        self.v[...] = self.xp.asarray(moments["v"])


# ---------------------------------------------------------------------------- schedules
def _check_step(step):
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step={step!r} is invalid, expected an integer >= 0")
    return int(step)


def linear_warmup_linear_decay(step, warmup_steps, total_steps) -> float:
    """Multiplier of the base rate at ``step`` (0-based): step / warmup_steps during the
    warmup, then (total_steps - step) / (total_steps - warmup_steps) down to 0 at
    total_steps, and 0 after it. The same float operations as Hugging Face's
    get_linear_schedule_with_warmup, so base_lr times it equals its rates bit for bit.
    Note that the first step's rate is 0 when there is a warmup."""
    step = _check_step(step)
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))


def constant(step, warmup_steps=0, total_steps=None) -> float:
    """Multiplier 1 at every step (the extra arguments are accepted and ignored)."""
    _check_step(step)
    return 1.0


def constant_with_warmup(step, warmup_steps, total_steps=None) -> float:
    """Multiplier step / warmup_steps during the warmup, then 1."""
    step = _check_step(step)
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    return 1.0


_SCHEDULE_FUNCTIONS = {"linear_warmup_linear_decay": linear_warmup_linear_decay,
                       "constant": constant, "constant_with_warmup": constant_with_warmup}


class LRSchedule:
    """The learning rate of each step: ``lr(step) = base_lr * multiplier(step)``.

    Args:
        kind: "linear_warmup_linear_decay" (BERT's; needs total_steps), "constant" or
            "constant_with_warmup".
        base_lr: the peak rate (reached at the end of the warmup).
        warmup_steps: length of the linear warmup from 0 (0: none).
        total_steps: where the linear decay reaches 0 (required by the linear schedule).
    """

    def __init__(self, kind, base_lr, warmup_steps=0, total_steps=None):
        if kind not in SCHEDULES:
            raise ValueError(f"kind={kind!r} is unknown, expected one of {SCHEDULES}")
        self.base_lr = _check_lr(base_lr, "base_lr")
        if (isinstance(warmup_steps, (bool, np.bool_)) or not isinstance(warmup_steps, numbers.Integral)
                or warmup_steps < 0):
            raise ValueError(f"warmup_steps={warmup_steps!r} is invalid, expected an integer >= 0")
        if total_steps is not None and (isinstance(total_steps, (bool, np.bool_))
                                        or not isinstance(total_steps, numbers.Integral)
                                        or total_steps <= 0):
            raise ValueError(f"total_steps={total_steps!r} is invalid, expected a positive integer")
        if kind == "linear_warmup_linear_decay":
            if total_steps is None:
                raise ValueError(f"total_steps=None is invalid for kind={kind!r}, expected the "
                                 "step where the rate reaches 0")
            if warmup_steps > total_steps:
                raise ValueError(f"warmup_steps={warmup_steps} is invalid, expected at most "
                                 f"total_steps={total_steps}")
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.total_steps = None if total_steps is None else int(total_steps)
        self._multiplier = _SCHEDULE_FUNCTIONS[kind]

    def multiplier(self, step) -> float:
        return self._multiplier(step, self.warmup_steps, self.total_steps)

    def lr(self, step) -> float:
        """The rate of update number ``step`` (0-based)."""
        return self.base_lr * self.multiplier(step)

    def __repr__(self):
        return (f"LRSchedule({self.kind!r}, base_lr={self.base_lr}, warmup_steps={self.warmup_steps}, "
                f"total_steps={self.total_steps})")


# ---------------------------------------------------------------------------- clipping
def global_norm(grad):
    """The L2 norm of the flat gradient buffer ``grad``, squares summed in float64, as a 0-d
    array on grad's device (reading it is the caller's choice: on the GPU, a host sync)."""
    xp = get_array_module(grad)
    return xp.sqrt(xp.sum(xp.square(grad), dtype=np.float64))


def clip_grad_norm(grad, max_norm, norm=None) -> float:
    """Scale ``grad`` in place so that its global L2 norm is at most ``max_norm``.

    The norm is taken over the whole flat gradient buffer (all parameters at once), with
    the squares summed in float64. When ``max_norm / (norm + 1e-6) < 1`` every element is
    multiplied by that factor, as torch.nn.utils.clip_grad_norm_ does (the 1e-6 keeps the
    division finite for a zero gradient). Returns the norm before clipping. A non-finite
    norm (an inf or nan somewhere) is returned as it is and nothing is scaled: the caller
    decides whether to skip the step or stop.
    """
    if not hasattr(grad, "dtype") or np.dtype(grad.dtype).kind != "f":
        raise TypeError(f"grad of type {type(grad).__name__} is invalid, expected a float array")
    max_norm = _real("max_norm", max_norm)
    if not (max_norm > 0 and math.isfinite(max_norm)):
        raise ValueError(f"max_norm={max_norm!r} is invalid, expected a finite number > 0")
    # ``norm``: the caller's ``global_norm(grad)``, already read with its other scalars
    norm = float(global_norm(grad) if norm is None else norm)     # a host sync if None
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        grad *= coef
    return norm
