"""Numba kernels of the ``cpu`` backend (imported lazily by :mod:`opsrg.rg.backends.cpu`).

Per sample: Philox4x32-10 words keyed by (key, global sample index), 5 input z drawn from the
alias table (FP) or the inverse CDF (EXP) or from uniform G (first step), 4 loop phases, the map
of RG_SPEC 2.2 as z' = ln(|N_r|^2/|N_t|^2), then histogram and float64 sums. The random stream
depends only on (key, sample index), so counts are identical for any chunk size or thread
count, and ``kernels/rg_step.cu`` draws the same stream on a GPU.

Samples go through the block stages A-D below (256 samples per block, per-thread buffers);
A and C vectorise, B (table lookups) and D (histogram) are scalar.

Vectorisation: numba has no vector maths library here (no SVML), so exp, log, sin and cos are
float32 polynomials (Cephes coefficients, about 1 ulp) with bit casts for the exponent, and LLVM
vectorises stages A and C (AVX-512: 16 float lanes). sin and cos come from one polynomial pair on
[-pi/4, pi/4] plus a quadrant rotation: there is no ``sincos`` call, whose missing vector variant
would block vectorisation (RG_SPEC 4, build gotcha). The float64 path has its own float64
polynomials for exp, log, sin and cos (about 1e-16), so it vectorises too (8 lanes).

Word layout per sample i (shared with the CUDA kernel): Philox call j = 0..4 with counter
(lo32(i), hi32(i), j, 0) gives words (x0, x1, x2, x3). Input z_{j+1} uses x0 (alias column) and
x1 (keep-or-alias) and x2 (position in the bin), or the 53 bits of (x0, x1) as the inverse-CDF
uniform; loop phase Phi_{j+1} (j < 4) uses x3.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

# fast-math flags without nnan/ninf: NaN and inf tests in the binning stay meaningful
FM = {"nsz", "arcp", "contract", "afn", "reassoc"}

U64 = np.uint64
MASK32 = U64(0xFFFFFFFF)
SH32 = U64(32)
SH8 = U64(8)
SH30 = U64(30)
PH_M0 = U64(0xD2511F53)
PH_M1 = U64(0xCD9E8D57)
PH_W0 = U64(0x9E3779B9)
PH_W1 = U64(0xBB67AE85)
Q30MASK = U64(0x3FFFFFFF)
U64_1 = U64(1)
U64_2 = U64(2)
U64_3 = U64(3)

F32 = np.float32
# float32 constants (module globals of numpy scalar type keep float32 typing in numba)
F_0 = F32(0.0)
F_HALF = F32(0.5)
F_1 = F32(1.0)
F_2M24 = F32(2.0 ** -24)
F_2M30 = F32(2.0 ** -30)
F_PIO2 = F32(math.pi / 2)
F_LOG2E = F32(1.4426950408889634)
F_LN2_HI = F32(0.693359375)
F_LN2_LO = F32(-2.12194440e-4)
F_SQRTH = F32(0.70710678118654752)
F_MIN_NORMAL = F32(1.1754943508222875e-38)
F_MAX = F32(3.4028234663852886e38)
F_EXP_P0 = F32(1.9875691500e-4)
F_EXP_P1 = F32(1.3981999507e-3)
F_EXP_P2 = F32(8.3334519073e-3)
F_EXP_P3 = F32(4.1665795894e-2)
F_EXP_P4 = F32(1.6666665459e-1)
F_EXP_P5 = F32(5.0000001201e-1)
F_LOG_P = tuple(F32(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                                 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                                 3.3333331174e-1))
F_LOG_P0, F_LOG_P1, F_LOG_P2, F_LOG_P3, F_LOG_P4, F_LOG_P5, F_LOG_P6, F_LOG_P7, F_LOG_P8 = F_LOG_P
F_SIN_P0 = F32(-1.9515295891e-4)
F_SIN_P1 = F32(8.3321608736e-3)
F_SIN_P2 = F32(-1.6666654611e-1)
F_COS_P0 = F32(2.443315711809948e-5)
F_COS_P1 = F32(-1.388731625493765e-3)
F_COS_P2 = F32(4.166664568298827e-2)
F_EXP_MIN = F32(-87.0)
F_INF = F32(np.inf)
F_NAN = F32(np.nan)
I32_127 = np.int32(127)
I32_23 = np.int32(23)
I32_MANT = np.int32(0x007FFFFF)
I32_HALF = np.int32(0x3F000000)


# ---------------------------------------------------------------------------------------- bit casts
@intrinsic
def _f32_bits(typingctx, x):
    """float32 -> its int32 bit pattern."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    """int32 bit pattern -> float32."""
    if x != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _f64_bits(typingctx, x):
    """float64 -> its int64 bit pattern."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, x):
    """int64 bit pattern -> float64."""
    if x != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _fetch_add(typingctx, arr, idx, val):
    """Atomic ``arr[idx] += val`` on an int64 array; returns the old value (a chunk counter)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(idx, types.Integer)
            and isinstance(val, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        aty = sig.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [i])
        return builder.atomic_rmw("add", ptr, v, "seq_cst")

    return types.int64(arr, idx, val), codegen


# ----------------------------------------------------------------------------------------- Philox
@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Salmon et al. 2011) on 32-bit values held in uint64."""
    for _ in range(10):
        p0 = c0 * PH_M0
        p1 = c2 * PH_M1
        n0 = (p1 >> SH32) ^ c1 ^ k0
        n1 = p1 & MASK32
        n2 = (p0 >> SH32) ^ c3 ^ k1
        n3 = p0 & MASK32
        c0 = n0
        c1 = n1
        c2 = n2
        c3 = n3
        k0 = (k0 + PH_W0) & MASK32
        k1 = (k1 + PH_W1) & MASK32
    return c0, c1, c2, c3


@njit(cache=True)
def philox_block(ctr, key):
    """Test helper: one Philox4x32-10 block (ctr: 4 uint32 values, key: 2)."""
    out = np.empty(4, dtype=np.uint64)
    a, b, c, d = philox4x32_10(U64(ctr[0]), U64(ctr[1]), U64(ctr[2]), U64(ctr[3]), U64(key[0]), U64(key[1]))
    out[0] = a
    out[1] = b
    out[2] = c
    out[3] = d
    return out


# ------------------------------------------------------------------------------- float32 maths
@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def exp_neg32(x):
    """exp(x) for float32 x <= 0 (x >= -87); Cephes expf, about 1 ulp."""
    x = max(x, F_EXP_MIN)
    fn = np.floor(x * F_LOG2E + F_HALF)
    r = x - fn * F_LN2_HI - fn * F_LN2_LO
    r2 = r * r
    p = ((((F_EXP_P0 * r + F_EXP_P1) * r + F_EXP_P2) * r + F_EXP_P3) * r + F_EXP_P4) * r + F_EXP_P5
    p = p * r2 + r + F_1
    scale = _bits_f32(np.int32((np.int32(fn) + I32_127) << I32_23))
    return p * scale


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def log32(q):
    """ln(q) for finite normal float32 q > 0; Cephes logf, about 1 ulp.

    0 and denormals give -inf, +inf gives +inf and NaN or negative input gives NaN.
    """
    bits = _f32_bits(q)
    e = (bits >> I32_23) - np.int32(126)
    m = _bits_f32(np.int32((bits & I32_MANT) | I32_HALF))  # in [0.5, 1)
    small = m < F_SQRTH
    fe = F32(e - np.int32(1)) if small else F32(e)
    x = (m + m - F_1) if small else (m - F_1)
    z = x * x
    y = ((((((((F_LOG_P0 * x + F_LOG_P1) * x + F_LOG_P2) * x + F_LOG_P3) * x + F_LOG_P4) * x + F_LOG_P5) * x
             + F_LOG_P6) * x + F_LOG_P7) * x + F_LOG_P8) * x * z
    y = y + F_LN2_LO * fe - F_HALF * z
    res = x + y + F_LN2_HI * fe
    if not (q >= F_MIN_NORMAL):
        res = -F_INF if q >= F_0 else F_NAN
    if q > F_MAX:
        res = F_INF
    return res


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def sincos_quarter32(a):
    """(cos a, sin a) for float32 |a| <= pi/4; Cephes sinf/cosf polynomials."""
    a2 = a * a
    s = ((F_SIN_P0 * a2 + F_SIN_P1) * a2 + F_SIN_P2) * a2 * a + a
    c = ((F_COS_P0 * a2 + F_COS_P1) * a2 + F_COS_P2) * a2 * a2 - F_HALF * a2 + F_1
    return c, s


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def rotate_quadrant(c, s, q):
    """(cos, sin) of a + q*pi/2 given (cos a, sin a); q in 0..3 as uint64."""
    odd = (q & U64_1) != 0
    neg_c = ((q + U64_1) & U64_2) != 0  # q = 1, 2: cos of the result < 0 side
    neg_s = (q & U64_2) != 0  # q = 2, 3
    cc = s if odd else c
    ss = c if odd else s
    cc = -cc if neg_c else cc
    ss = -ss if neg_s else ss
    return cc, ss


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def phase_from_word32(w):
    """(cos, sin) of the loop phase (pi/2) (q + f - 1/2), q = top 2 bits, f = low 30 bits / 2^30.

    That phase is uniform over a full period [-pi/4, 7pi/4), equivalent to uniform on [0, 2pi).
    """
    q = w >> SH30
    f = F32(w & Q30MASK) * F_2M30
    c, s = sincos_quarter32((f - F_HALF) * F_PIO2)
    return rotate_quadrant(c, s, q)


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def t_r_32(z):
    """(t, r) from z: e = exp(-|z|), t^2 = e/(1+e) for z >= 0 else 1/(1+e)."""
    e = exp_neg32(-abs(z))
    inv = F_1 / (F_1 + e)
    small = math.sqrt(e * inv)
    large = math.sqrt(inv)
    if z >= F_0:
        return small, large
    return large, small


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def t_r_64(z):
    e = exp_neg64(-abs(z))
    inv = 1.0 / (1.0 + e)
    small = math.sqrt(e * inv)
    large = math.sqrt(inv)
    if z >= 0.0:
        return small, large
    return large, small


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def sincos_quarter64(a):
    """(cos a, sin a) for |a| <= pi/4 in float64 (Taylor to a^17 / a^16: < 1e-16)."""
    a2 = a * a
    s = a * (1.0 + a2 * (-1.0 / 6 + a2 * (1.0 / 120 + a2 * (-1.0 / 5040 + a2 * (
        1.0 / 362880 + a2 * (-1.0 / 39916800 + a2 * (1.0 / 6227020800 + a2 * (
            -1.0 / 1307674368000 + a2 * (1.0 / 355687428096000)))))))))
    c = 1.0 + a2 * (-0.5 + a2 * (1.0 / 24 + a2 * (-1.0 / 720 + a2 * (1.0 / 40320 + a2 * (
        -1.0 / 3628800 + a2 * (1.0 / 479001600 + a2 * (-1.0 / 87178291200 + a2 * (
            1.0 / 20922789888000))))))))
    return c, s


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def exp_neg64(x):
    """exp(x) for float64 x <= 0, vectorisable: 2^n times a degree-13 Taylor polynomial on
    |r| <= ln2/2; 0 below -708 (so exp(-inf) = 0). Relative error about 1e-16 + 3e-17 |x| (the
    fast-math flags may merge the two-part ln 2 reduction): 1e-15 at |x| = 25, 2.4e-14 at 708."""
    xc = max(x, -708.0)
    fn = np.floor(xc * 1.4426950408889634 + 0.5)
    r = xc - fn * 6.93145751953125e-1 - fn * 1.42860682030941723212e-6
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    res = p * _bits_f64(np.int64((np.int64(fn) + np.int64(1023)) << np.int64(52)))
    return res if x >= -708.0 else 0.0


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def log64(q):
    """ln(q) for float64 q, vectorisable: q = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m =
    2 atanh(s), s = (m-1)/(m+1), by its series to s^21 (error ~1e-16). 0 and subnormals give
    -inf, +inf gives +inf, NaN and negative input NaN."""
    bits = _f64_bits(q)
    e = (bits >> np.int64(52)) - np.int64(1022)
    m = _bits_f64(np.int64((bits & np.int64(0x000FFFFFFFFFFFFF)) | np.int64(0x3FE0000000000000)))  # [0.5, 1)
    small = m < 0.7071067811865476
    m = m + m if small else m
    fe = float(e - np.int64(1)) if small else float(e)
    sv = (m - 1.0) / (m + 1.0)
    s2 = sv * sv
    p = 1.0 / 21
    p = p * s2 + 1.0 / 19
    p = p * s2 + 1.0 / 17
    p = p * s2 + 1.0 / 15
    p = p * s2 + 1.0 / 13
    p = p * s2 + 1.0 / 11
    p = p * s2 + 1.0 / 9
    p = p * s2 + 1.0 / 7
    p = p * s2 + 1.0 / 5
    p = p * s2 + 1.0 / 3
    res = fe * 6.93145751953125e-1 + (fe * 1.42860682030941723212e-6 + 2.0 * sv * (1.0 + s2 * p))
    if not (q >= 2.2250738585072014e-308):
        res = -np.inf if q >= 0.0 else np.nan
    if q > 1.7976931348623157e308:
        res = np.inf
    return res


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def phase_from_word64(w):
    q = w >> SH30
    f = float(w & Q30MASK) * (2.0 ** -30)
    c, s = sincos_quarter64((f - 0.5) * (math.pi / 2))
    return rotate_quadrant(c, s, q)


# ---------------------------------------------------------------------------------------- the map
@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def numerators2(t1, t2, t3, t4, t5, r1, r2, r3, r4, r5, c1, c2, c3, c4, s1, s2, s3, s4, one):
    """(|N_r|^2, |N_t|^2) of RG_SPEC 2.2 in real arithmetic of the type of ``one``."""
    c34 = c3 * c4 - s3 * s4
    s34 = s3 * c4 + c3 * s4
    c12 = c1 * c2 - s1 * s2
    s12 = s1 * c2 + c1 * s2
    # N_t = t1 t5 (a E2 - 1) + t2 t4 E3 E4 (b conj(E1) - 1) + t3 (t2 t5 E3 + t1 t4 E4)
    a = r2 * r3 * r4
    b = r1 * r3 * r5
    t15 = t1 * t5
    t24 = t2 * t4
    t25 = t2 * t5
    t14 = t1 * t4
    x = b * c1 - one
    y = -(b * s1)
    nt_re = t15 * (a * c2 - one) + t24 * (c34 * x - s34 * y) + t3 * (t25 * c3 + t14 * c4)
    nt_im = t15 * (a * s2) + t24 * (s34 * x + c34 * y) + t3 * (t25 * s3 + t14 * s4)
    # N_r = r1 r2 (c E4 - 1) + r4 r5 E1 E2 (d conj(E3) - 1) + r3 (r2 r5 E1 + r1 r4 E2)
    cc = t3 * t4 * t5
    dd = t1 * t2 * t3
    r12 = r1 * r2
    r45 = r4 * r5
    r25 = r2 * r5
    r14 = r1 * r4
    x = dd * c3 - one
    y = -(dd * s3)
    nr_re = r12 * (cc * c4 - one) + r45 * (c12 * x - s12 * y) + r3 * (r25 * c1 + r14 * c2)
    nr_im = r12 * (cc * s4) + r45 * (s12 * x + c12 * y) + r3 * (r25 * s1 + r14 * s2)
    return nr_re * nr_re + nr_im * nr_im, nt_re * nt_re + nt_im * nt_im


# ------------------------------------------------------------------------------------ per sample
@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def column(x0, nbins_u):
    """Alias column floor(u1 * nbins) for u1 = x0 / 2^32."""
    return (x0 * nbins_u) >> SH32


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def in_bin32(x2, width32):
    """Offset u3 * width inside the bin, u3 = (x2 >> 8) / 2^24, float32."""
    return F32(x2 >> SH8) * F_2M24 * width32


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def in_bin64(x2, width):
    """Offset u3 * width inside the bin, u3 = (x2 + 1/2) / 2^32, float64."""
    return (float(x2) + 0.5) * (2.0 ** -32) * width


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def uniform_g_z32(x0, shift32):
    """z = ln((1-G)/G) + shift for G = (x0 + 1/2)/2^32, uniform on (0, 1); ratio in float64."""
    g = float(x0) + 0.5
    return log32(F32((4294967296.0 - g) / g)) + shift32


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def uniform_g_z64(x0, shift):
    g = float(x0) + 0.5
    return log64((4294967296.0 - g) / g) + shift


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def words(i, k0, k1):
    """The 20 Philox words of global sample i: calls j = 0..4 with counter (lo(i), hi(i), j, 0)."""
    lo = U64(i) & MASK32
    hi = U64(i) >> SH32
    a0, a1, a2, a3 = philox4x32_10(lo, hi, U64(0), U64(0), k0, k1)
    b0, b1, b2, b3 = philox4x32_10(lo, hi, U64_1, U64(0), k0, k1)
    c0, c1, c2, c3 = philox4x32_10(lo, hi, U64_2, U64(0), k0, k1)
    d0, d1, d2, d3 = philox4x32_10(lo, hi, U64_3, U64(0), k0, k1)
    e0, e1, e2, e3 = philox4x32_10(lo, hi, U64(4), U64(0), k0, k1)
    return a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3, e0, e1, e2, e3


# --------------------------------------------------------------------------------- block stages
# A block of BK samples goes through three loops over per-thread buffers (layout below). Loops A
# and C vectorise; B, the table gathers, is scalar: LLVM cannot prove that an indirect load does
# not alias the buffers stored in the same loop, so a gather in A or C would stop vectorisation
# of the whole loop. All rows live in one buffer at constant offsets (BK is a compile-time
# constant), which lets LLVM prove the rows disjoint without runtime checks.
#   ib (uint32, 10 rows): 0-4 word x0, then the bin, of z1..z5; 5-9 word x1
#   fb (float, 16 rows):  0-4 offset in the bin (or z itself on a first step); 5-8 cos Phi1..4;
#                         9-12 sin Phi1..4; 13 |N_r|^2; 14 |N_t|^2; 15 z'
BK = 256
NIB = 10
NFB = 16
MODE_FIRST = 0
MODE_ALIAS = 1
MODE_ICDF = 2
ICDF_FRAC_MAX = 1.0 - 2.0 ** -30


@njit(cache=True, fastmath=FM, error_model="numpy")
def stage_a32(b0, m, k0, k1, width32, first, shift32, ib, fb):
    """Loop A (float32): Philox words, offsets in the bin and phases of samples b0 .. b0+m-1.

    On a first step (uniform G) a second loop turns the words x0 into z = ln((1-G)/G) + shift.
    """
    for j in range(m):
        (a0, a1, a2, a3, b0_, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3,
         e0, e1, e2, _e3) = words(b0 + j, k0, k1)
        ib[j] = a0
        ib[BK + j] = b0_
        ib[2 * BK + j] = c0
        ib[3 * BK + j] = d0
        ib[4 * BK + j] = e0
        ib[5 * BK + j] = a1
        ib[6 * BK + j] = b1
        ib[7 * BK + j] = c1
        ib[8 * BK + j] = d1
        ib[9 * BK + j] = e1
        fb[j] = in_bin32(a2, width32)
        fb[BK + j] = in_bin32(b2, width32)
        fb[2 * BK + j] = in_bin32(c2, width32)
        fb[3 * BK + j] = in_bin32(d2, width32)
        fb[4 * BK + j] = in_bin32(e2, width32)
        fb[5 * BK + j], fb[9 * BK + j] = phase_from_word32(a3)
        fb[6 * BK + j], fb[10 * BK + j] = phase_from_word32(b3)
        fb[7 * BK + j], fb[11 * BK + j] = phase_from_word32(c3)
        fb[8 * BK + j], fb[12 * BK + j] = phase_from_word32(d3)
    if first:
        for j in range(5 * BK):
            fb[j] = uniform_g_z32(U64(ib[j]), shift32)


@njit(cache=True, fastmath=FM, error_model="numpy")
def stage_a64(b0, m, k0, k1, width, first, shift, ib, fb):
    """Loop A (float64)."""
    for j in range(m):
        (a0, a1, a2, a3, b0_, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3,
         e0, e1, e2, _e3) = words(b0 + j, k0, k1)
        ib[j] = a0
        ib[BK + j] = b0_
        ib[2 * BK + j] = c0
        ib[3 * BK + j] = d0
        ib[4 * BK + j] = e0
        ib[5 * BK + j] = a1
        ib[6 * BK + j] = b1
        ib[7 * BK + j] = c1
        ib[8 * BK + j] = d1
        ib[9 * BK + j] = e1
        fb[j] = in_bin64(a2, width)
        fb[BK + j] = in_bin64(b2, width)
        fb[2 * BK + j] = in_bin64(c2, width)
        fb[3 * BK + j] = in_bin64(d2, width)
        fb[4 * BK + j] = in_bin64(e2, width)
        fb[5 * BK + j], fb[9 * BK + j] = phase_from_word64(a3)
        fb[6 * BK + j], fb[10 * BK + j] = phase_from_word64(b3)
        fb[7 * BK + j], fb[11 * BK + j] = phase_from_word64(c3)
        fb[8 * BK + j], fb[12 * BK + j] = phase_from_word64(d3)
    if first:
        for j in range(5 * BK):
            fb[j] = uniform_g_z64(U64(ib[j]), shift)


@njit(cache=True, fastmath=FM, error_model="numpy")
def stage_b_alias(m, nbins_u, packed, ib):
    """Loop B (scalar), alias table: word x0 -> column -> bin, with packed[c] = thr << 32 | alias."""
    for k in range(5):
        for j in range(m):
            c = column(U64(ib[k * BK + j]), nbins_u)
            p = packed[c]
            ib[k * BK + j] = c if U64(ib[(5 + k) * BK + j]) < (p >> SH32) else (p & MASK32)


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")
def icdf_bin(x, cum, guide, cells, ncells):
    """(bin, fraction) of the inverse CDF at x = u * total, as ``histogram.InverseCDF.positions``.

    The guide cell gives a starting bin; sweeps backwards and forwards then find the bin with
    cum[i] <= x < cum[i+1] (the same bin for any guide, and never an empty bin, also when
    rounding of x * cells lands one cell high or trailing bins are empty). The fraction is
    clamped below 1 - 2^-30 as in the core sampler. :func:`stage_b_icdf` runs the same steps in
    three passes.
    """
    i = np.intp(guide[min(np.intp(x * cells), ncells - 1)])
    while i > 0 and cum[i] > x:
        i -= 1
    while cum[i + 1] <= x:
        i += 1
    lo = cum[i]
    return i, min((x - lo) / (cum[i + 1] - lo), ICDF_FRAC_MAX)


@njit(cache=True, fastmath=FM, error_model="numpy")
def stage_b_icdf(m, cum, guide, width, ib, fb, xs):
    """Loop B, inverse CDF: u = 53 bits of (x0, x1) -> bin and offset in the bin.

    Three passes per input, so the table loads of one pass do not wait on the arithmetic of
    another (40% faster than one loop): x and the guide cell (vectorised); the guide lookup and
    the sweeps of :func:`icdf_bin` (scalar), keeping cum[i] and cum[i+1]; the fraction
    (vectorised). ``guide`` has one int32 entry per equal-probability cell, plus one; ``xs`` is a
    float64 scratch of 3 BK.
    """
    nb = cum.shape[0] - 1
    total = cum[nb]
    xmax = np.nextafter(total, 0.0)
    ncells = guide.shape[0] - 1
    cells = ncells / total
    for k in range(5):
        for j in range(m):
            hi = U64(ib[k * BK + j])
            lo = U64(ib[(5 + k) * BK + j])
            x = min(float((hi << U64(21)) | (lo >> U64(11))) * (2.0 ** -53) * total, xmax)
            xs[j] = x
            ib[k * BK + j] = min(np.intp(x * cells), ncells - 1)
        for j in range(m):
            x = xs[j]
            i = np.intp(guide[ib[k * BK + j]])
            while i > 0 and cum[i] > x:
                i -= 1
            while cum[i + 1] <= x:
                i += 1
            ib[k * BK + j] = i
            xs[BK + j] = cum[i]
            xs[2 * BK + j] = cum[i + 1]
        for j in range(m):
            lo_c = xs[BK + j]
            fb[k * BK + j] = min((xs[j] - lo_c) / (xs[2 * BK + j] - lo_c), ICDF_FRAC_MAX) * width


@njit(cache=True, fastmath=FM, error_model="numpy")
def icdf_positions(u, cum, guide):
    """Test helper: bin + fraction for float64 uniforms u, through :func:`icdf_bin`."""
    total = cum[cum.shape[0] - 1]
    xmax = np.nextafter(total, 0.0)
    ncells = guide.shape[0] - 1
    cells = ncells / total
    out = np.empty(u.shape[0], dtype=np.float64)
    for j in range(u.shape[0]):
        i, frac = icdf_bin(min(u[j] * total, xmax), cum, guide, cells, ncells)
        out[j] = i + frac
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def stage_c32(m, width, base, first, ib, fb):
    """Loop C (float32): z = base + bin * width + offset (float64, rounded once); t, r; the map; z'."""
    for j in range(m):
        if first:
            z1 = fb[j]
            z2 = fb[BK + j]
            z3 = fb[2 * BK + j]
            z4 = fb[3 * BK + j]
            z5 = fb[4 * BK + j]
        else:
            z1 = F32(base + float(ib[j]) * width + float(fb[j]))
            z2 = F32(base + float(ib[BK + j]) * width + float(fb[BK + j]))
            z3 = F32(base + float(ib[2 * BK + j]) * width + float(fb[2 * BK + j]))
            z4 = F32(base + float(ib[3 * BK + j]) * width + float(fb[3 * BK + j]))
            z5 = F32(base + float(ib[4 * BK + j]) * width + float(fb[4 * BK + j]))
        t1, r1 = t_r_32(z1)
        t2, r2 = t_r_32(z2)
        t3, r3 = t_r_32(z3)
        t4, r4 = t_r_32(z4)
        t5, r5 = t_r_32(z5)
        a, b = numerators2(t1, t2, t3, t4, t5, r1, r2, r3, r4, r5,
                           fb[5 * BK + j], fb[6 * BK + j], fb[7 * BK + j], fb[8 * BK + j],
                           fb[9 * BK + j], fb[10 * BK + j], fb[11 * BK + j], fb[12 * BK + j], F_1)
        fb[13 * BK + j] = a
        fb[14 * BK + j] = b
        fb[15 * BK + j] = log32(a / b)


@njit(cache=True, fastmath=FM, error_model="numpy")
def stage_c64(m, width, base, first, ib, fb):
    """Loop C (float64, libm exp and log)."""
    for j in range(m):
        if first:
            z1 = fb[j]
            z2 = fb[BK + j]
            z3 = fb[2 * BK + j]
            z4 = fb[3 * BK + j]
            z5 = fb[4 * BK + j]
        else:
            z1 = base + float(ib[j]) * width + fb[j]
            z2 = base + float(ib[BK + j]) * width + fb[BK + j]
            z3 = base + float(ib[2 * BK + j]) * width + fb[2 * BK + j]
            z4 = base + float(ib[3 * BK + j]) * width + fb[3 * BK + j]
            z5 = base + float(ib[4 * BK + j]) * width + fb[4 * BK + j]
        t1, r1 = t_r_64(z1)
        t2, r2 = t_r_64(z2)
        t3, r3 = t_r_64(z3)
        t4, r4 = t_r_64(z4)
        t5, r5 = t_r_64(z5)
        a, b = numerators2(t1, t2, t3, t4, t5, r1, r2, r3, r4, r5,
                           fb[5 * BK + j], fb[6 * BK + j], fb[7 * BK + j], fb[8 * BK + j],
                           fb[9 * BK + j], fb[10 * BK + j], fb[11 * BK + j], fb[12 * BK + j], 1.0)
        fb[13 * BK + j] = a
        fb[14 * BK + j] = b
        fb[15 * BK + j] = log64(a / b)


@njit(cache=True, fastmath=FM, error_model="numpy")
def stage_d(m, fb, counts, zmax, scale, nbins, acc, flows):
    """Loop D (scalar): histogram z', count under/overflow and NaN, sum z, z^2, G, G^2 (float64).

    Same convention as the numpy backend: bin = floor((z + zmax) * nbins / (2 zmax)) in float64;
    below 0 (also -inf) is underflow, >= nbins (also +inf) overflow, NaN is nonfinite.
    """
    sz = 0.0
    sz2 = 0.0
    sg = 0.0
    sg2 = 0.0
    under = 0
    over = 0
    bad = 0
    for j in range(m):
        z = float(fb[15 * BK + j])
        if z != z:  # noqa: PLR0124 - NaN test (fast-math flags keep NaN semantics)
            bad += 1
            continue
        x = np.floor((z + zmax) * scale)
        if x < 0.0:
            under += 1
            continue
        if x >= nbins:
            over += 1
            continue
        counts[int(x)] += 1
        # G = t'^2 = |N_t|^2 / (|N_t|^2 + |N_r|^2) = 1 / (1 + e^z')
        nt2 = float(fb[14 * BK + j])
        g = nt2 / (nt2 + float(fb[13 * BK + j]))
        sz += z
        sz2 += z * z
        sg += g
        sg2 += g * g
    acc[0] += sz
    acc[1] += sz2
    acc[2] += sg
    acc[3] += sg2
    flows[0] += under
    flows[1] += over
    flows[2] += bad


# --------------------------------------------------------------------------------- step drivers
@njit(cache=True, fastmath=FM, error_model="numpy", parallel=True)
def step32(n, k0, k1, mode, packed, cum, guide, nbins, width, zmax, shift, chunk, nworkers):
    """One RG step in float32: (counts[nworkers, nbins], sums[nchunks, 4], flows[nchunks, 3]).

    ``mode``: MODE_FIRST (uniform G), MODE_ALIAS (``packed``) or MODE_ICDF (``cum``, ``guide``).
    Workers claim chunks from an atomic counter; each chunk's sums are kept apart so the caller
    adds them in chunk order, and the counts are integers: the result does not depend on which
    thread ran which chunk.
    """
    first = mode == MODE_FIRST
    nbins_u = U64(nbins)
    width32 = F32(width)
    shift32 = F32(shift)
    base = -zmax + shift
    scale = nbins / (2.0 * zmax)
    nchunks = (n + chunk - 1) // chunk
    counts = np.zeros((nworkers, nbins), dtype=np.int64)
    sums = np.zeros((nchunks, 4), dtype=np.float64)
    flows = np.zeros((nchunks, 3), dtype=np.int64)
    next_chunk = np.zeros(1, dtype=np.int64)  # chunks are claimed dynamically: a slow thread
    for w in prange(nworkers):  # (a busy core) does not hold the step back
        ib = np.zeros(NIB * BK, dtype=np.uint32)
        fb = np.zeros(NFB * BK, dtype=np.float32)
        xs = np.zeros(3 * BK, dtype=np.float64)
        hist = counts[w]
        ch = _fetch_add(next_chunk, 0, 1)
        while ch < nchunks:
            start = ch * chunk
            stop = min(start + chunk, n)
            acc = sums[ch]
            fl = flows[ch]
            for b0 in range(start, stop, BK):
                m = min(BK, stop - b0)
                stage_a32(b0, m, k0, k1, width32, first, shift32, ib, fb)
                if mode == MODE_ALIAS:
                    stage_b_alias(m, nbins_u, packed, ib)
                elif mode == MODE_ICDF:
                    stage_b_icdf(m, cum, guide, width, ib, fb, xs)
                stage_c32(m, width, base, first, ib, fb)
                stage_d(m, fb, hist, zmax, scale, nbins, acc, fl)
            ch = _fetch_add(next_chunk, 0, 1)
    return counts, sums, flows


@njit(cache=True, fastmath=FM, error_model="numpy", parallel=True)
def step64(n, k0, k1, mode, packed, cum, guide, nbins, width, zmax, shift, chunk, nworkers):
    """As :func:`step32` in float64."""
    first = mode == MODE_FIRST
    nbins_u = U64(nbins)
    base = -zmax + shift
    scale = nbins / (2.0 * zmax)
    nchunks = (n + chunk - 1) // chunk
    counts = np.zeros((nworkers, nbins), dtype=np.int64)
    sums = np.zeros((nchunks, 4), dtype=np.float64)
    flows = np.zeros((nchunks, 3), dtype=np.int64)
    next_chunk = np.zeros(1, dtype=np.int64)  # chunks are claimed dynamically: a slow thread
    for w in prange(nworkers):  # (a busy core) does not hold the step back
        ib = np.zeros(NIB * BK, dtype=np.uint32)
        fb = np.zeros(NFB * BK, dtype=np.float64)
        xs = np.zeros(3 * BK, dtype=np.float64)
        hist = counts[w]
        ch = _fetch_add(next_chunk, 0, 1)
        while ch < nchunks:
            start = ch * chunk
            stop = min(start + chunk, n)
            acc = sums[ch]
            fl = flows[ch]
            for b0 in range(start, stop, BK):
                m = min(BK, stop - b0)
                stage_a64(b0, m, k0, k1, width, first, shift, ib, fb)
                if mode == MODE_ALIAS:
                    stage_b_alias(m, nbins_u, packed, ib)
                elif mode == MODE_ICDF:
                    stage_b_icdf(m, cum, guide, width, ib, fb, xs)
                stage_c64(m, width, base, first, ib, fb)
                stage_d(m, fb, hist, zmax, scale, nbins, acc, fl)
            ch = _fetch_add(next_chunk, 0, 1)
    return counts, sums, flows


# ------------------------------------------------------------------------------ the map on arrays
@njit(cache=True, fastmath=FM, error_model="numpy")
def map_z32(z, cph, sph):
    """z' (float32) for z (5, N) float32 and cos/sin of the phases (4, N) float32."""
    n = z.shape[1]
    out = np.empty(n, dtype=np.float32)
    for j in range(n):
        t1, r1 = t_r_32(z[0, j])
        t2, r2 = t_r_32(z[1, j])
        t3, r3 = t_r_32(z[2, j])
        t4, r4 = t_r_32(z[3, j])
        t5, r5 = t_r_32(z[4, j])
        a, b = numerators2(t1, t2, t3, t4, t5, r1, r2, r3, r4, r5, cph[0, j], cph[1, j], cph[2, j],
                           cph[3, j], sph[0, j], sph[1, j], sph[2, j], sph[3, j], F_1)
        out[j] = log32(a / b)
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def map_z64(z, cph, sph):
    n = z.shape[1]
    out = np.empty(n, dtype=np.float64)
    for j in range(n):
        t1, r1 = t_r_64(z[0, j])
        t2, r2 = t_r_64(z[1, j])
        t3, r3 = t_r_64(z[2, j])
        t4, r4 = t_r_64(z[3, j])
        t5, r5 = t_r_64(z[4, j])
        a, b = numerators2(t1, t2, t3, t4, t5, r1, r2, r3, r4, r5, cph[0, j], cph[1, j], cph[2, j],
                           cph[3, j], sph[0, j], sph[1, j], sph[2, j], sph[3, j], 1.0)
        out[j] = log64(a / b)
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def sincos_reduced32(y, q):
    """(cos, sin) arrays in float32 of (pi/2)(q + y), y in [-1/2, 1/2] float32, q uint64 quadrant."""
    n = y.shape[0]
    c = np.empty(n, dtype=np.float32)
    s = np.empty(n, dtype=np.float32)
    for j in range(n):
        cj, sj = sincos_quarter32(y[j] * F_PIO2)
        c[j], s[j] = rotate_quadrant(cj, sj, q[j])
    return c, s


@njit(cache=True, fastmath=FM, error_model="numpy")
def sincos_reduced64(y, q):
    n = y.shape[0]
    c = np.empty(n, dtype=np.float64)
    s = np.empty(n, dtype=np.float64)
    for j in range(n):
        cj, sj = sincos_quarter64(y[j] * (math.pi / 2))
        c[j], s[j] = rotate_quadrant(cj, sj, q[j])
    return c, s


@njit(cache=True, fastmath=FM, error_model="numpy")
def exp_neg32_array(x):
    out = np.empty_like(x)
    for j in range(x.shape[0]):
        out[j] = exp_neg32(x[j])
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def log32_array(x):
    out = np.empty_like(x)
    for j in range(x.shape[0]):
        out[j] = log32(x[j])
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def exp_neg64_array(x):
    out = np.empty_like(x)
    for j in range(x.shape[0]):
        out[j] = exp_neg64(x[j])
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def log64_array(x):
    out = np.empty_like(x)
    for j in range(x.shape[0]):
        out[j] = log64(x[j])
    return out
