r"""Random streams of the simulator (compiled): xoshiro256++, SplitMix64 seeding, jump streams, ziggurat normals.

* **Generator**: xoshiro256++ (Blackman & Vigna 2018), 256-bit state per chain, 64-bit outputs, all bits
  of good quality, period :math:`2^{256}-1`.
* **Streams**: the base state is filled from the seed by SplitMix64; chain ``c`` starts from the base
  state advanced by ``c`` calls of ``jump()`` (each jump = :math:`2^{128}` draws), so the streams of
  different chains never overlap (for fewer than :math:`2^{128}` draws per chain). A chain's numbers
  depend only on (seed, chain index): results are bit-identical whatever the number of threads, the
  order in which chains are processed, the chunking of the run into segments, or the number of chains.
* **Normals**: the 256-layer ziggurat of Marsaglia & Tsang (2000) in the 64-bit form used by NumPy
  (Doornik's variant): one 64-bit draw gives 8 bits of layer index, 1 sign bit and a 52-bit abscissa;
  ~98.5% of the draws return after one table look-up, the rest go to the exact wedge / tail
  (Marsaglia 1964) rejection steps in :func:`_normal_slow`. Exact up to the 52-bit resolution of the
  abscissa and the double-precision tables.

In the hot loops (:mod:`._step`, :mod:`._exact`) a chain's stream state is carried as four uint64
scalars ``s0, s1, s2, s3`` (:func:`xoshiro_next`, :func:`normal` take and return them), so that it lives
in registers and no array reference counting happens per draw; it is loaded from and stored back to the
``rng`` array (chains, 4) uint64 once per chain and segment. The Python-facing entry points are
:func:`chain_states` (stream states of chains 0..C-1), :func:`fill_normals` (what
:func:`quadsgd.simulation.draw_normals` returns), :func:`normal_sums` (a raw sampling-rate probe for the
benchmarks) and :func:`raw_u64` (raw outputs, for reference-vector tests).

Nothing here validates input; :mod:`quadsgd.simulation` is the Python layer.
"""
from __future__ import annotations

import math

import numpy as np
from numba import float64, prange, uint64

from ._jit import jit, jit_inline, jit_parallel

# ---------------------------------------------------------------------------------------------
# SplitMix64 / xoshiro256++
# ---------------------------------------------------------------------------------------------
_SM_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SM_M1 = np.uint64(0xBF58476D1CE4E5B9)
_SM_M2 = np.uint64(0x94D049BB133111EB)
_JUMP = np.array([0x180EC6D33CFD0ABA, 0xD5A61266F0C9392C, 0xA9582618E03FC9AA, 0x39ABDC4529B1661C],
                 dtype=np.uint64)
_U1 = np.uint64(1)
_MASK52 = np.uint64(0x000FFFFFFFFFFFFF)
_MASK8 = np.uint64(0xFF)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53

#: ziggurat constants: right edge r of the last layer and 1/r (256 layers)
ZIG_R = 3.6541528853610088
ZIG_INV_R = 1.0 / ZIG_R


@jit_inline
def _rotl(x, k):
    return (x << uint64(k)) | (x >> uint64(64 - k))


@jit_inline
def xoshiro_next(s0, s1, s2, s3):
    """xoshiro256++: (64-bit output, new state s0..s3). The state is passed as 4 uint64 scalars so that
    it lives in registers and no array reference counting happens in hot loops."""
    res = _rotl(s0 + s3, 23) + s0
    t = s1 << uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return res, s0, s1, s2, s3


@jit_inline
def _u01(r):
    """Uniform on [0, 1) from the top 53 bits of a 64-bit draw."""
    return float64(r >> uint64(11)) * _TWO_M53


@jit_inline
def next_u64(s):
    """xoshiro256++ output; s: uint64 array (4,), advanced in place (for non-hot code)."""
    r, s[0], s[1], s[2], s[3] = xoshiro_next(s[0], s[1], s[2], s[3])
    return r


@jit
def splitmix_state(seed):
    """Base xoshiro state (4,) uint64 from a 64-bit seed by SplitMix64 (Vigna's recommended seeding)."""
    x = uint64(seed)
    out = np.empty(4, dtype=np.uint64)
    for i in range(4):
        x = x + _SM_GAMMA
        z = x
        z = (z ^ (z >> uint64(30))) * _SM_M1
        z = (z ^ (z >> uint64(27))) * _SM_M2
        out[i] = z ^ (z >> uint64(31))
    return out


@jit
def jump(s):
    """Advance s (4,) uint64 in place by 2**128 draws (xoshiro256 jump polynomial)."""
    t0 = uint64(0)
    t1 = uint64(0)
    t2 = uint64(0)
    t3 = uint64(0)
    for i in range(4):
        word = _JUMP[i]
        for bit in range(64):
            if (word >> uint64(bit)) & _U1:
                t0 ^= s[0]
                t1 ^= s[1]
                t2 ^= s[2]
                t3 ^= s[3]
            next_u64(s)
    s[0] = t0
    s[1] = t1
    s[2] = t2
    s[3] = t3


@jit
def chain_states(seed, chains):
    """Stream states of chains 0..chains-1: shape (chains, 4) uint64; row c = jump^c(splitmix(seed))."""
    out = np.empty((chains, 4), dtype=np.uint64)
    s = splitmix_state(seed)
    for c in range(chains):
        out[c, :] = s
        jump(s)
    return out


@jit
def raw_u64(state, n):
    """n raw xoshiro256++ outputs from a copy of state (4,); for tests against reference vectors."""
    s = state.copy()
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        out[i] = next_u64(s)
    return out


# ---------------------------------------------------------------------------------------------
# Ziggurat normal sampler
# ---------------------------------------------------------------------------------------------
@jit
def ziggurat_tables():
    r"""Tables (ki (256,) uint64, wi (256,) float64, fi (256,) float64) of the 256-layer ziggurat.

    Layer i = 1..255 is the rectangle :math:`[0, x_i]\times[f(x_i), f(x_{i-1})]`, :math:`f(x) = e^{-x^2/2}`,
    :math:`x_{255} = r`, :math:`x_0 = 0`; layer 0 is the base strip :math:`[0, v/f(r)]\times[0, f(r)]`
    plus the tail beyond r. All have area :math:`v = r f(r) + \sqrt{\pi/2}\,\mathrm{erfc}(r/\sqrt2)`.
    ``wi[i] = x_i / 2^52`` (layer 0: ``v/f(r)/2^52``), ``ki[i] = 2^52 x_{i-1}/x_i`` (immediate-accept
    threshold of the 52-bit abscissa; layer 0: ``2^52 r f(r)/v``), ``fi[i] = f(x_i)``.
    """
    m1 = 4503599627370496.0  # 2**52
    r = ZIG_R
    f_r = math.exp(-0.5 * r * r)
    v = r * f_r + math.sqrt(0.5 * math.pi) * math.erfc(r / math.sqrt(2.0))
    q = v / f_r
    ki = np.zeros(256, dtype=np.uint64)
    wi = np.zeros(256)
    fi = np.zeros(256)
    ki[0] = uint64((r / q) * m1)
    ki[1] = uint64(0)
    wi[0] = q / m1
    wi[255] = r / m1
    fi[0] = 1.0
    fi[255] = f_r
    dn = r
    tn = r
    for i in range(254, 0, -1):
        dn = math.sqrt(-2.0 * math.log(v / dn + math.exp(-0.5 * dn * dn)))
        ki[i + 1] = uint64((dn / tn) * m1)
        tn = dn
        fi[i] = math.exp(-0.5 * dn * dn)
        wi[i] = dn / m1
    return ki, wi, fi


#: module-level tables: Numba freezes global arrays into the compiled code as constants
ZIG_KI, ZIG_WI, ZIG_FI = ziggurat_tables()


@jit
def _normal_slow(s0, s1, s2, s3, idx, rabs, x):
    """Rejection part of the ziggurat (~1.2% of draws): wedge test, or tail for the base layer.

    Returns (normal, s0, s1, s2, s3)."""
    while True:
        if idx == 0:
            # tail beyond r (Marsaglia 1964); 1 - U avoids log(0)
            while True:
                r, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
                xx = -ZIG_INV_R * math.log1p(-_u01(r))
                r, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
                yy = -math.log1p(-_u01(r))
                if yy + yy > xx * xx:
                    if (rabs >> uint64(8)) & _U1:
                        return -(ZIG_R + xx), s0, s1, s2, s3
                    return ZIG_R + xx, s0, s1, s2, s3
        else:
            r, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
            if (ZIG_FI[idx - 1] - ZIG_FI[idx]) * _u01(r) + ZIG_FI[idx] < math.exp(-0.5 * x * x):
                return x, s0, s1, s2, s3
        r, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
        idx = np.int64(r & _MASK8)
        r >>= uint64(8)
        sign = r & _U1
        rabs = (r >> _U1) & _MASK52
        x = float64(rabs) * ZIG_WI[idx]
        if sign:
            x = -x
        if rabs < ZIG_KI[idx]:
            return x, s0, s1, s2, s3


@jit_inline
def normal(s0, s1, s2, s3):
    """One standard normal: returns (z, s0, s1, s2, s3) (ziggurat fast path inline).

    64-bit draw r: bits 0-7 layer index, bit 8 sign, bits 9-60 the 52-bit abscissa."""
    r, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
    idx = np.int64(r & _MASK8)
    r >>= uint64(8)
    sign = r & _U1
    rabs = (r >> _U1) & _MASK52
    x = float64(rabs) * ZIG_WI[idx]
    if sign:
        x = -x
    if rabs < ZIG_KI[idx]:
        return x, s0, s1, s2, s3
    return _normal_slow(s0, s1, s2, s3, idx, rabs, x)


@jit_parallel
def fill_normals(rng, out):
    """out[c, :] <- the next out.shape[1] normals of chain c's stream; rng (chains, 4) updated in place."""
    C = out.shape[0]
    n = out.shape[1]
    for c in prange(C):
        s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
        row = out[c]
        for i in range(n):
            z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
            row[i] = z
        rng[c, 0] = s0
        rng[c, 1] = s1
        rng[c, 2] = s2
        rng[c, 3] = s3


@jit_parallel
def normal_sums(rng, n, out):
    """Raw sampling-rate probe: out[c] = sum of the next n normals of chain c (nothing stored)."""
    C = rng.shape[0]
    for c in prange(C):
        s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
        acc = 0.0
        for _i in range(n):
            z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
            acc += z
        out[c] = acc
        rng[c, 0] = s0
        rng[c, 1] = s1
        rng[c, 2] = s2
        rng[c, 3] = s3
