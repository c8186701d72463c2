"""A float32-arithmetic GELU, as a measured prototype: what minibert's float32 GELU would
gain in speed and lose in accuracy if it computed in float32 instead of float64.

    python benchmarks/prototype_gelu_float32.py [--rounds R] [--points N] [--fit]

Why it exists. ``minibert/kernels/gelu_cpu.py`` computes the float32 GELU in float64
arithmetic (four AVX2 lanes), which keeps Phi within 0.51 ulp, a tested contract. Torch's
float32 GELU runs on eight lanes in float32 at a few ulp. Whether to trade the contract for
speed is a decision for the project; this script gives it numbers. Nothing in minibert
imports it.

The function: y = GELU(z) = z Phi(z), the exact form, forward only (inference: no slope).
With a = |z| and the structure of ``gelu_cpu.py``:

    Phi(-a) = e R(a),  e = exp(-a^2 / 2),  R(a) = erfcx(a / sqrt 2) / 2
    y = z Phi(-a)        for z <= 0
    y = z - z Phi(-a)    for z > 0       (Phi(z) = 1 - Phi(-a), without rounding 1 - q)

In float32, three places would lose digits, and each is handled:

1. **a^2.** Rounding a^2 in float32 moves exp's argument by up to a^2 2^-25, a relative
   error of that size in e: 65 ulp in y at z = -12.7 when measured. So a^2 = hi + lo
   exactly, with hi = fl(a a) and lo = fma(a, a, -hi). Writing ``a * a - hi`` under
   fastmath "contract" does not give that FMA: LLVM computes the product once for both
   and the difference is hi - hi = 0. ``_fma`` calls LLVM's fma intrinsic instead.
2. **exp(w + wl)**, with w = -hi / 2 and wl = -lo / 2: 2^k exp(r), k = round(w / ln 2),
   Cody and Waite's two-part ln 2 (``_blocks.LN2_HI`` has 9 bits, so w - k LN2_HI is
   exact), and every small term folded into r's low part. exp(r) - 1 comes from a Taylor
   polynomial (degree 7), and the 1 + ... is added only inside a multiply-add. 2^(k + 64)
   is built from its bits (``_blocks._pow2``), and K 2^-64 multiplies last, so that a
   subnormal y is rounded once.
3. **R.** ``gelu_cpu``'s rational, evaluated in float32, is off by up to 7.2 units of
   2^-24. Refitted as R(a) = K Q(a) / (a Q(a) + P(a)) with K = 1 / sqrt(2 pi), degrees 4
   and 5, float32 coefficients (``fit_r``: relative error, linearised least squares
   reweighted towards minimax, Lawson's method). Max relative error 2.2e-9 on [0, 14.5].
   Q's rounding errors cancel between numerator and denominator for large a, but not near
   a = 0.

For |z| > 14.5, y is z * 0 or z * 1: the current kernel's results for +-inf (inf, NaN)
and tails.

Measured (2-core AMD EPYC, AVX2, one thread; 5.6 million points: a grid of 2^22 + 1 on
[-16, 16], 10^6 random values, every 7th float32 in [-14.5, -12]):

    y   float32 prototype  max 3.7 ulp (mean 0.29; 6% of points beyond 1 ulp)
        current kernel     max 0.504 ulp (mean 0.16)
    ns an element, float32 (1024, 3072), 21 interleaved rounds:
        prototype 1.42, current inference kernel 2.34, torch F.gelu 0.90

The error is spread over z < 1 (5 or 6 float32 roundings: z Q, the multiply-add with
exp(r) - 1, a Q + P, the division, the final scale); z >= 2 stays within 0.55 ulp. Reaching
about 1 ulp would need error-free steps at those places, and so more instructions. The
hot loop is 95 instructions for eight elements, 43 of them reloads of constants (AVX2 has
16 vector registers); the current kernel's is 158.

Reference values: z Phi(z) in float64 with ``scipy.special.ndtr``, checked against
``math.erfc``. Errors are in float32 ulps at the reference value (2^-149 in the subnormal
range). This script imports NumPy at the top: only ``--fit`` calls LAPACK, and it sets
Numba's and torch's threads at run time. It prints its tables and writes no file.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from minibert.kernels._blocks import LN2_HI, LN2_LO, LOG2E, _pow2

f32 = np.float32
_FLAGS = dict(nogil=True, fastmath={"contract"}, error_model="numpy")

#: beyond |z| = A_CUT, |z Phi(-|z|)| < 2^-150: Phi(z) is 0 or 1 in float32
A_CUT = f32(14.5)
#: K 2^-64, K = 1 / sqrt(2 pi): the last factor of Phi(-a) (2^k carries 2^64, see 2.)
C = f32(2.0 ** -64 / math.sqrt(2 * math.pi))
#: R(a) = K Q / (a Q + P), fitted with C's exact value (``fit_r``); P(0) = 2 K: R(0) = 1/2
P_COEF = tuple(f32(c) for c in (0.7978845834732056, 0.4917602837085724, 0.16051451861858368,
                                0.0283781960606575, 0.0023277553264051676))
Q_COEF = tuple(f32(c) for c in (1.0, 1.0717597007751465, 0.5526657104492188,
                                0.16482017934322357, 0.028396114706993103,
                                0.0023273138795048))
P0, P1, P2, P3, P4 = P_COEF
Q0, Q1, Q2, Q3, Q4, Q5 = Q_COEF
#: (e^r - 1 - r) / r^2 = 1/2 + r/6 + ... + r^5/5040 (exp to degree 7)
E0, E1, E2, E3, E4, E5 = (f32(1.0 / math.factorial(n)) for n in range(2, 8))
_LOG2E, _LN2_HI, _LN2_LO = f32(LOG2E), f32(LN2_HI), f32(LN2_LO)


@intrinsic
def _fma(typingctx, x, y, z):
    """x y + z with one rounding (LLVM's fma intrinsic: vfmadd on AVX2, vectorised)."""
    if isinstance(x, types.Float) and x == y == z:
        def codegen(context, builder, sig, args):
            lt = context.get_value_type(x)
            name = "llvm.fma.f32" if x.bitwidth == 32 else "llvm.fma.f64"
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lt, [lt] * 3),
                                                name)
            return builder.call(fn, args)
        return x(x, y, z), codegen
    return None


@njit(**_FLAGS)
def _fma_demo(a):
    """The rounding error of a * a, fma(a, a, -fl(a a)): nonzero where a^2 is not a
    float32 (the test checks that the compiler keeps it)."""
    return _fma(a, a, -(a * a))


@njit(inline="always", **_FLAGS)
def _parts(z):
    """(q, rp, den, t) with Phi(-a) = q (1 + rp) / den * t * C, a = min(|z|, A_CUT):
    Q(a), exp(r) - 1, a Q(a) + P(a), 2^(k + 64)."""
    a = min(abs(z), A_CUT)
    hi = a * a                                 # 1. a^2 = hi + lo exactly
    lo = _fma(a, a, -hi)
    w = f32(-0.5) * hi
    wl = f32(-0.5) * lo
    k = np.floor(w * _LOG2E + f32(0.5))        # 2. exp(w + wl) = 2^k exp(r), k in [-152, 0]
    rh = w - k * _LN2_HI                       # exact
    rl = wl - k * _LN2_LO                      # the small terms
    r = rh + rl                                # |r| <= ln2 / 2 (+ a tiny part)
    e = E5
    e = e * r + E4
    e = e * r + E3
    e = e * r + E2
    e = e * r + E1
    e = e * r + E0
    rp = rh + (rl + (r * r) * e)               # exp(r) - 1
    t = _pow2(k + f32(64.0))                   # 2^(k + 64), k + 64 in [-88, 64]: normal
    q = Q5                                     # 3. R / K = Q / (a Q + P)
    q = q * a + Q4
    q = q * a + Q3
    q = q * a + Q2
    q = q * a + Q1
    q = q * a + Q0
    p = P4
    p = p * a + P3
    p = p * a + P2
    p = p * a + P1
    p = p * a + P0
    return q, rp, a * q + p, t


@njit(inline="always", **_FLAGS)
def gelu32(z):
    """GELU(z) = z Phi(z) of a float32 z, in float32 arithmetic."""
    q, rp, den, t = _parts(z)
    m = max(min(z, A_CUT), -A_CUT) * q
    v = ((m * rp + m) / den * t) * C           # z Phi(-a): (1 + rp) only in the multiply-add
    y = v if z <= f32(0.0) else z - v
    big = f32(1.0) if z > f32(0.0) else f32(0.0)
    return z * big if abs(z) > A_CUT else y   # tails and +-inf as the current kernel


@njit(inline="always", **_FLAGS)
def phi32(z):
    """Phi(z) from the same parts (for the accuracy table)."""
    q, rp, den, t = _parts(z)
    s = ((q * rp + q) / den * t) * C           # Phi(-a)
    s = f32(0.0) if abs(z) > A_CUT else s
    return s if z < f32(0.0) else f32(1.0) - s


def _map_rows(fn):
    """A compiled y[i, j] = fn(x[i, j]) over a C-contiguous float32 (N, C) x: the loop
    LLVM vectorises, ``fn`` inlined."""
    @njit(**_FLAGS)
    def rows(x, y):
        for i in range(x.shape[0]):
            xr, yr = x[i], y[i]
            for j in range(xr.shape[0]):
                yr[j] = fn(xr[j])
    return rows


gelu32_rows = _map_rows(gelu32)
phi32_rows = _map_rows(phi32)


def _rows(fn, z):
    z2 = np.ascontiguousarray(z, dtype=np.float32).reshape(1, -1)
    y = np.empty_like(z2)
    fn(z2, y)
    return y.reshape(np.shape(z))


# --------------------------------------------------------------------------- the fit


def fit_r(m=4, n=5, iters=80):
    """P (m + 1 coefficients) and Q (n + 1) of R(a) = Kc Q / (a Q + P) on [0, A_CUT], as
    float32 numbers: Kc = C 2^64 (the constant the kernel multiplies by), P(0) = 2 Kc, Q(0)
    = 1. Minimises the relative error: the linearised equations R (a Q + P) = Kc Q are
    solved by least squares, weighted by 1 / (Kc Q) of the previous step and by weights that
    grow where the error is large (Lawson), keeping the best step."""
    from scipy.special import erfcx
    kc = float(C) * 2.0 ** 64
    a = np.linspace(0, float(A_CUT), 30001)
    R = 0.5 * erfcx(a / math.sqrt(2))
    p0 = 2 * kc
    A0 = np.stack([R * a ** j for j in range(1, m + 1)]
                  + [(R * a - kc) * a ** j for j in range(1, n + 1)], 1)
    b0 = kc - R * a - R * p0
    scale = np.abs(A0).max(0)
    w, q_prev, best = np.full_like(a, 1 / len(a)), np.ones_like(a), (np.inf, None)
    for _ in range(iters):
        W = np.sqrt(w) / (kc * q_prev)
        sol = np.linalg.lstsq(A0 / scale * W[:, None], b0 * W, rcond=None)[0] / scale
        p = np.float32(np.r_[p0, sol[:m]]).astype(float)
        q = np.float32(np.r_[1.0, sol[m:]]).astype(float)
        q_prev = np.polyval(q[::-1], a)
        err = np.abs(kc * q_prev / (a * q_prev + np.polyval(p[::-1], a)) / R - 1)
        if err.max() < best[0]:
            best = (err.max(), (p, q))
        w = w * err
        w /= w.sum()
    return best[1][0], best[1][1], best[0]


# --------------------------------------------------------------------------- measurements


def _ulp32(ref):
    """The float32 ulp at each float64 reference value (2^-149 in the subnormal range)."""
    _, e = np.frexp(np.abs(ref))
    return np.ldexp(1.0, np.maximum(e - 1, -126) - 23)


def accuracy(points):
    """Max and mean ulp of y and Phi, prototype and current kernel."""
    from scipy.special import ndtr

    from minibert.kernels import gelu_cpu
    rng = np.random.default_rng(0)
    grid = np.linspace(-16, 16, points + 1).astype(np.float32)
    uniform = rng.uniform(-16, 16, 500_000).astype(np.float32)
    log_uniform = (np.exp(rng.uniform(math.log(1e-30), math.log(20), 500_000))
                   * rng.choice([-1, 1], 500_000)).astype(np.float32)
    # every 7th float32 in [-14.5, -12] (subnormal y): the bits of negative floats grow
    # with |z|, so the range of integers runs from -12's bits to -14.5's
    first, last = np.float32(-12.0).view(np.int32), np.float32(-14.5).view(np.int32)
    tail = np.arange(first, last + 1, 7, dtype=np.int32).view(np.float32)
    z = np.concatenate([grid, uniform, log_uniform, tail])
    z64 = z.astype(np.float64)
    phi_ref = ndtr(z64)
    some = rng.choice(len(z), 20000, replace=False)
    by_erfc = np.array([0.5 * math.erfc(-t / math.sqrt(2)) for t in z64[some]])
    print(f"reference: ndtr against math.erfc, max relative difference "
          f"{np.max(np.abs(by_erfc / phi_ref[some] - 1)):.1e}")
    cur_y = gelu_cpu.bias_forward(z.reshape(1, -1), None, "none", grad=False)[0].ravel()
    rows = {"y, float32 prototype": (_rows(gelu32_rows, z), z64 * phi_ref),
            "y, current kernel": (cur_y, z64 * phi_ref),
            "Phi, float32 prototype": (_rows(phi32_rows, z), phi_ref),
            "Phi, current kernel": (gelu_cpu.normal_cdf(z), phi_ref)}
    print(f"accuracy on {len(z):,} points (float32 ulps at the float64 reference):")
    for name, (val, ref) in rows.items():
        u = np.abs(val.astype(np.float64) - ref) / _ulp32(ref)
        print(f"  {name:24s} max {u.max():.3f} (z = {z[np.argmax(u)]:.7g})   "
              f"mean {u.mean():.3f}   beyond 1 ulp {np.mean(u > 1):.2%}")
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38,
                        14.6, -14.6], np.float32)
    same = (_rows(gelu32_rows, special).view(np.int32)
            == gelu_cpu.bias_forward(special.reshape(1, -1), None, "none",
                                     grad=False)[0].view(np.int32))
    print(f"  special values (+-0, +-inf, NaN, extremes, tails) with the current kernel's "
          f"bits: {int(same.sum())} of {len(special)}")


def speed(rounds):
    """ns an element on one thread, float32 (1024, 3072), interleaved rounds."""
    import numba

    from minibert.kernels import gelu_cpu
    numba.set_num_threads(1)
    x = (np.random.default_rng(1).standard_normal((1024, 3072)) * 1.5).astype(np.float32)
    y = np.empty_like(x)
    fns = {"float32 prototype": lambda: gelu32_rows(x, y),
           "current kernel, inference": lambda: gelu_cpu.bias_forward(x, None, "none",
                                                                      grad=False)}
    try:
        import torch
        torch.set_num_threads(1)
        xt = torch.from_numpy(x)
        fns["torch F.gelu"] = lambda: torch.nn.functional.gelu(xt)
    except ImportError:
        print("(torch is not installed: no torch row)")
    for fn in fns.values():
        fn(), fn()                             # compiled and warm
    ns = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            calls = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                calls.append(time.perf_counter() - t0)
            ns[name].append(statistics.median(calls) / x.size * 1e9)
    print(f"one thread, float32 (1024, 3072), median of {rounds} interleaved rounds:")
    for name, v in ns.items():
        print(f"  {name:26s} {statistics.median(v):.2f} ns an element "
              f"(rounds {min(v):.2f} to {max(v):.2f})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds (default 15)")
    ap.add_argument("--points", type=int, default=1 << 22,
                    help="grid points on [-16, 16] for the accuracy (default 2^22)")
    ap.add_argument("--fit", action="store_true", help="refit R and print its coefficients")
    args = ap.parse_args(argv)
    if args.fit:
        p, q, err = fit_r()
        print(f"P = {p.tolist()}\nQ = {q.tolist()}\nmax relative error {err:.2e}")
    accuracy(args.points)
    speed(args.rounds)


if __name__ == "__main__":
    main()
