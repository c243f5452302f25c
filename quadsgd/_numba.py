r"""Compiled kernels of the simulator (Numba, ``cache=True``, ``fastmath=False``): random streams and recursions.

Nothing here validates input or does I/O; :mod:`quadsgd.simulate` is the Python layer.

Random numbers
--------------
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

Recursions (whitened linear model, paper Appendix A.1, eq. 15, with PyTorch heavy-ball momentum)
-----------------------------------------------------------------------------------------------------
Per chain and step :math:`t` (step index :math:`t=0,1,\dots`, iterate :math:`u_t` after t steps):

.. math:: g = \Omega u_t - \xi_t,\quad b \leftarrow \beta b + g,\quad u_{t+1} = u_t - \lambda_t b,\qquad
          e^{(j)} \leftarrow (1-a_j)e^{(j)} + a_j u_{t+1}

with :math:`\xi_t\sim\mathcal N(0, I_d)` drawn coordinate by coordinate (``d`` consecutive normals of the
chain's stream per step). Averages with finite kernels (TwoPoint, NPoint, SWA, Kernel) are built in
*accumulator slots* driven by an event list computed in Python (``INIT``: slot = w * u0;
``ADD``: slot += w * u_t), so no history of states is kept; see :mod:`quadsgd.simulate`.

Arrays: ``rng`` (chains, 4) uint64 stream states (updated in place); ``u`` (chains, d); ``b`` (chains, d)
or (chains, 0) without momentum; ``ema`` (chains, m, d); ``acc`` (chains, n_slots, d); state arrays are
float32 or float64 (arithmetic inside a step is float64, stored in the state dtype; losses are float64).
"""
from __future__ import annotations

import math

import numpy as np
from numba import float64, njit, prange, uint64

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


@njit(inline="always")
def _rotl(x, k):
    return (x << uint64(k)) | (x >> uint64(64 - k))


@njit(inline="always")
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


@njit(inline="always")
def _u01(r):
    """Uniform on [0, 1) from the top 53 bits of a 64-bit draw."""
    return float64(r >> uint64(11)) * _TWO_M53


@njit(inline="always")
def next_u64(s):
    """xoshiro256++ output; s: uint64 array (4,), advanced in place (for non-hot code)."""
    r, s[0], s[1], s[2], s[3] = xoshiro_next(s[0], s[1], s[2], s[3])
    return r


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
def chain_states(seed, chains):
    """Stream states of chains 0..chains-1: shape (chains, 4) uint64; row c = jump^c(splitmix(seed))."""
    out = np.empty((chains, 4), dtype=np.uint64)
    s = splitmix_state(seed)
    for c in range(chains):
        out[c, :] = s
        jump(s)
    return out


@njit(cache=True)
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
@njit(cache=True)
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


@njit(cache=True)
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


@njit(inline="always")
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


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
def normal_sums(rng, n, out):
    """Raw sampling-rate probe: out[c] = sum of the next n normals of chain c (nothing stored)."""
    C = rng.shape[0]
    for c in prange(C):
        s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
        acc = 0.0
        for i in range(n):
            z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
            acc += z
        out[c] = acc
        rng[c, 0] = s0
        rng[c, 1] = s1
        rng[c, 2] = s2
        rng[c, 3] = s3


# ---------------------------------------------------------------------------------------------
# Helpers shared by the step kernels
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _quad(x, h_diag, H, dense):
    """0.5 x^T H x (float64) for a 1-D x; H diagonal (h_diag) or dense (H)."""
    d = x.shape[0]
    acc = 0.0
    if dense:
        for i in range(d):
            row = 0.0
            for j in range(d):
                row += H[i, j] * float64(x[j])
            acc += float64(x[i]) * row
    else:
        for i in range(d):
            xi = float64(x[i])
            acc += h_diag[i] * xi * xi
    return 0.5 * acc


@njit(inline="always")
def _apply_events(e0, e1, ev_slot, ev_w, ev_init, ac, uc, u0):
    """Accumulator events of one step for one chain: INIT slot = w*u0, ADD slot += w*u."""
    d = uc.shape[0]
    for e in range(e0, e1):
        row = ac[ev_slot[e]]
        w = ev_w[e]
        if ev_init[e]:
            for i in range(d):
                row[i] = w * u0[i]
        else:
            for i in range(d):
                row[i] = float64(row[i]) + w * float64(uc[i])


@njit(inline="always")
def _emit(k, src, loss, c, rl, rg, chain_loss, sel, states, final, last_record):
    """Store one averaged iterate's loss (and state when asked) at a record."""
    chain_loss[k, rl, c] = loss
    sc = sel[c]
    if sc >= 0:
        states[k, sc, rg, :] = src
    if rg == last_record:
        final[k, c, :] = src


@njit(inline="always")
def _record_slots(c, rl, rg, uc, ec, ac, h_diag, H, dense, k_type, k_idx, k_nslots, lsum_u,
                  lsum_e, chain_loss, sel, states, final, last_record):
    """All kernels' records of one chain at one record time (k_type 0 Last, 1 EMA, 2 slot)."""
    K = k_type.shape[0]
    for k in range(K):
        kt = k_type[k]
        if kt == 0:
            _emit(k, uc, lsum_u, c, rl, rg, chain_loss, sel, states, final, last_record)
        elif kt == 1:
            j = k_idx[k]
            _emit(k, ec[j], lsum_e[j], c, rl, rg, chain_loss, sel, states, final, last_record)
        else:
            src = ac[k_idx[k] + rg % k_nslots[k]]
            _emit(k, src, _quad(src, h_diag, H, dense), c, rl, rg, chain_loss, sel, states, final,
                  last_record)


# ---------------------------------------------------------------------------------------------
# method="step": diagonal omega (and small dense omega, per-chain mat-vec), all steps in one call
# ---------------------------------------------------------------------------------------------
# One sweep = one step of one chain over its d coordinates. The common cases (no EMA / one EMA,
# with / without momentum) have their own loops, inlined into the prange body; each returns the
# half-loss sums 0.5 sum_i h_i x_i^2 (float64) of u (and of the EMA tracker) when ``rec`` (a
# loop-invariant branch that LLVM unswitches), and the stream state.
@njit(inline="always")
def _sweep_0(s0, s1, s2, s3, uc, omega, h, lt, rec):
    lu = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        uc[i] = ui - lt * (omega[i] * ui - z)
        if rec:
            ui = float64(uc[i])
            lu += h[i] * ui * ui
    return 0.5 * lu, s0, s1, s2, s3


@njit(inline="always")
def _sweep_0m(s0, s1, s2, s3, uc, bc, omega, h, lt, beta, rec):
    lu = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        bi = beta * float64(bc[i]) + (omega[i] * ui - z)
        bc[i] = bi
        uc[i] = ui - lt * bi
        if rec:
            ui = float64(uc[i])
            lu += h[i] * ui * ui
    return 0.5 * lu, s0, s1, s2, s3


@njit(inline="always")
def _sweep_1(s0, s1, s2, s3, uc, ec, omega, h, lt, a, rec):
    lu = 0.0
    le = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        uc[i] = ui - lt * (omega[i] * ui - z)
        ui = float64(uc[i])
        ec[0, i] = (1.0 - a) * float64(ec[0, i]) + a * ui
        if rec:
            hi = h[i]
            lu += hi * ui * ui
            ej = float64(ec[0, i])
            le += hi * ej * ej
    return 0.5 * lu, 0.5 * le, s0, s1, s2, s3


@njit(inline="always")
def _sweep_1m(s0, s1, s2, s3, uc, bc, ec, omega, h, lt, beta, a, rec):
    lu = 0.0
    le = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        bi = beta * float64(bc[i]) + (omega[i] * ui - z)
        bc[i] = bi
        uc[i] = ui - lt * bi
        ui = float64(uc[i])
        ec[0, i] = (1.0 - a) * float64(ec[0, i]) + a * ui
        if rec:
            hi = h[i]
            lu += hi * ui * ui
            ej = float64(ec[0, i])
            le += hi * ej * ej
    return 0.5 * lu, 0.5 * le, s0, s1, s2, s3


@njit(inline="always")
def _sweep_gen(s0, s1, s2, s3, uc, bc, ec, omega, h, lt, beta, mom, ema_a, rec, lsum_e):
    """Any number of EMA trackers; fills lsum_e (m,) when rec; returns the half-loss of u."""
    m = ema_a.shape[0]
    lu = 0.0
    for j in range(m):
        lsum_e[j] = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        if mom:
            bi = beta * float64(bc[i]) + (omega[i] * ui - z)
            bc[i] = bi
            uc[i] = ui - lt * bi
        else:
            uc[i] = ui - lt * (omega[i] * ui - z)
        ui = float64(uc[i])
        hi = h[i]
        if rec:
            lu += hi * ui * ui
        for j in range(m):
            a = ema_a[j]
            ec[j, i] = (1.0 - a) * float64(ec[j, i]) + a * ui
            if rec:
                ej = float64(ec[j, i])
                lsum_e[j] += hi * ej * ej
    for j in range(m):
        lsum_e[j] *= 0.5
    return 0.5 * lu, s0, s1, s2, s3


@njit(inline="always")
def _sweep_dense(s0, s1, s2, s3, uc, bc, ec, g, Om, H, lt, beta, mom, ema_a, rec, lsum_e):
    """Small dense omega: g = Omega u - xi by a per-chain mat-vec (noise in coordinate order)."""
    d = uc.shape[0]
    m = ema_a.shape[0]
    for i in range(d):
        acc_i = 0.0
        for j in range(d):
            acc_i += Om[i, j] * float64(uc[j])
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        g[i] = acc_i - z
    for i in range(d):
        if mom:
            bi = beta * float64(bc[i]) + g[i]
            bc[i] = bi
            uc[i] = float64(uc[i]) - lt * bi
        else:
            uc[i] = float64(uc[i]) - lt * g[i]
        ui = float64(uc[i])
        for j in range(m):
            a = ema_a[j]
            ec[j, i] = (1.0 - a) * float64(ec[j, i]) + a * ui
    lu = 0.0
    if rec:
        lu = _quad(uc, H[0], H, True)
        for j in range(m):
            lsum_e[j] = _quad(ec[j], H[0], H, True)
    return lu, s0, s1, s2, s3


@njit(cache=True)
def _chain_steps(c, rng, u, b, ema, acc, omega, Om, dense, h_diag, H, u0, lr, beta, ema_a,
                 ev_ptr, ev_slot, ev_w, ev_init, rec_local, rec_global,
                 k_type, k_idx, k_nslots, chain_loss, sel, states, final, last_record):
    """All steps of one segment for chain c (the body of :func:`step_chains`)."""
    d = u.shape[1]
    nsteps = lr.shape[0]
    m = ema_a.shape[0]
    mom = beta != 0.0
    s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
    uc = u[c]
    bc = b[c]
    ec = ema[c]
    ac = acc[c]
    lsum_e = np.zeros(max(m, 1))
    g = np.zeros(d if dense else 1)
    for tl in range(nsteps):
        lt = lr[tl]
        rl = rec_local[tl]
        rec = rl >= 0
        if dense:
            lsum_u, s0, s1, s2, s3 = _sweep_dense(s0, s1, s2, s3, uc, bc, ec, g, Om, H, lt, beta,
                                                  mom, ema_a, rec, lsum_e)
        elif m == 0:
            if mom:
                lsum_u, s0, s1, s2, s3 = _sweep_0m(s0, s1, s2, s3, uc, bc, omega, h_diag, lt, beta, rec)
            else:
                lsum_u, s0, s1, s2, s3 = _sweep_0(s0, s1, s2, s3, uc, omega, h_diag, lt, rec)
        elif m == 1:
            if mom:
                lsum_u, le, s0, s1, s2, s3 = _sweep_1m(s0, s1, s2, s3, uc, bc, ec, omega, h_diag,
                                                       lt, beta, ema_a[0], rec)
            else:
                lsum_u, le, s0, s1, s2, s3 = _sweep_1(s0, s1, s2, s3, uc, ec, omega, h_diag, lt,
                                                      ema_a[0], rec)
            lsum_e[0] = le
        else:
            lsum_u, s0, s1, s2, s3 = _sweep_gen(s0, s1, s2, s3, uc, bc, ec, omega, h_diag, lt, beta,
                                                mom, ema_a, rec, lsum_e)
        _apply_events(ev_ptr[tl], ev_ptr[tl + 1], ev_slot, ev_w, ev_init, ac, uc, u0)
        if rec:
            _record_slots(c, rl, rec_global[tl], uc, ec, ac, h_diag, H, dense, k_type, k_idx,
                          k_nslots, lsum_u, lsum_e, chain_loss, sel, states, final, last_record)
    rng[c, 0] = s0
    rng[c, 1] = s1
    rng[c, 2] = s2
    rng[c, 3] = s3


@njit(parallel=True, cache=True)
def step_chains(rng, u, b, ema, acc, omega, Om, dense, h_diag, H, u0, lr, beta, ema_a,
                ev_ptr, ev_slot, ev_w, ev_init, rec_local, rec_global,
                k_type, k_idx, k_nslots, chain_loss, sel, states, final, last_record):
    r"""Advance every chain by ``lr.shape[0]`` steps (one segment), chains in parallel.

    Diagonal (``dense`` False): ``omega`` (d,) and ``h_diag`` (d,); no d x d work, all per coordinate:
    :math:`u_i \leftarrow u_i - \lambda_t(\beta b_i + \omega_i u_i - \xi_i)`.
    Dense (``dense`` True, small d): ``Om`` (d, d), ``H`` (d, d); per-chain mat-vec :math:`\Omega u`.
    lr (nsteps,): the learning rate of each step of the segment. ev_ptr (nsteps+1,): events of local
    step tl are ev_ptr[tl]:ev_ptr[tl+1]. rec_local / rec_global (nsteps,): record index (in the
    segment's chain_loss (K, n_rec_seg, chains) / global) at the end of the step, or -1.
    """
    for c in prange(u.shape[0]):
        _chain_steps(c, rng, u, b, ema, acc, omega, Om, dense, h_diag, H, u0, lr, beta, ema_a,
                     ev_ptr, ev_slot, ev_w, ev_init, rec_local, rec_global,
                     k_type, k_idx, k_nslots, chain_loss, sel, states, final, last_record)


# ---------------------------------------------------------------------------------------------
# method="step", dense omega with BLAS: the gradient G = U Omega^T comes from a batched matmul
# ---------------------------------------------------------------------------------------------
@njit(cache=True)
def update_dense(u, b, ema, acc, G, Z, off, u0, lt, beta, ema_a, e0, e1, ev_slot, ev_w, ev_init):
    r"""One step of every chain given ``G = U @ Omega^T`` (chains, d) and the step's normals
    ``Z[:, off:off+d]`` (from :func:`fill_normals`):
    :math:`b \leftarrow \beta b + G - \xi`, :math:`u \leftarrow u - \lambda b`, EMA trackers, then the
    accumulator events e0:e1 of this step.

    Serial on purpose: it alternates with a multi-threaded BLAS call every step, and two thread pools
    (OpenMP spin-waiting and OpenBLAS) handing the cores back and forth cost more than they gain.
    """
    C = u.shape[0]
    d = u.shape[1]
    m = ema_a.shape[0]
    mom = beta != 0.0
    for c in range(C):
        uc = u[c]
        bc = b[c]
        ec = ema[c]
        gc = G[c]
        zc = Z[c]
        for i in range(d):
            z = zc[off + i]
            if mom:
                bi = beta * float64(bc[i]) + (float64(gc[i]) - z)
                bc[i] = bi
                uc[i] = float64(uc[i]) - lt * bi
            else:
                uc[i] = float64(uc[i]) - lt * (float64(gc[i]) - z)
            ui = float64(uc[i])
            for j in range(m):
                a = ema_a[j]
                ec[j, i] = (1.0 - a) * float64(ec[j, i]) + a * ui
        _apply_events(e0, e1, ev_slot, ev_w, ev_init, acc[c], uc, u0)


# ---------------------------------------------------------------------------------------------
# method="exact", diagonal omega: Gaussian k-step transitions of the per-coordinate augmented state
# ---------------------------------------------------------------------------------------------
@njit(cache=True)
def _exact_chain(c, rng, X, acc, A, L, tr_id, has_S, u0, h, ev_ptr, ev_kind, ev_slot, ev_w,
                 rec_local, rec_global, k_type, k_idx, k_nslots, chain_loss, sel, states, final,
                 last_record):
    """All intervals of one segment for chain c (the body of :func:`exact_chains`)."""
    d = X.shape[1]
    p = X.shape[2]
    n_int = tr_id.shape[0]
    K = k_type.shape[0]
    s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
    x = X[c]
    ac = acc[c]
    z = np.empty(p)
    xn = np.empty(p)
    ubuf = np.empty(d)
    for it in range(n_int):
        tr = tr_id[it]
        if has_S:
            for i in range(d):
                x[i, p - 1] = 0.0
        if p == 1:
            for i in range(d):
                z0, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
                x[i, 0] = A[tr, i, 0, 0] * float64(x[i, 0]) + L[tr, i, 0, 0] * z0
        elif p == 2:
            for i in range(d):
                z0, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
                z1, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
                x0 = float64(x[i, 0])
                x1 = float64(x[i, 1])
                x[i, 0] = (A[tr, i, 0, 0] * x0 + A[tr, i, 0, 1] * x1) + (L[tr, i, 0, 0] * z0 + L[tr, i, 0, 1] * z1)
                x[i, 1] = (A[tr, i, 1, 0] * x0 + A[tr, i, 1, 1] * x1) + (L[tr, i, 1, 0] * z0 + L[tr, i, 1, 1] * z1)
        else:
            for i in range(d):
                for q in range(p):
                    zq, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
                    z[q] = zq
                for q in range(p):  # (no array views in this loop: they cost reference counting)
                    v = 0.0
                    for r in range(p):
                        v += A[tr, i, q, r] * float64(x[i, r])
                    w_ = 0.0
                    for r in range(p):
                        w_ += L[tr, i, q, r] * z[r]
                    xn[q] = v + w_
                for q in range(p):
                    x[i, q] = xn[q]
        for e in range(ev_ptr[it], ev_ptr[it + 1]):
            row = ac[ev_slot[e]]
            w = ev_w[e]
            kind = ev_kind[e]
            if kind == 0:
                for i in range(d):
                    row[i] = w * u0[i]
            elif kind == 1:
                for i in range(d):
                    row[i] = float64(row[i]) + w * float64(x[i, 0])
            else:
                for i in range(d):
                    row[i] = float64(row[i]) + w * float64(x[i, p - 1])
        rl = rec_local[it]
        if rl >= 0:
            rg = rec_global[it]
            for k in range(K):
                kt = k_type[k]
                if kt == 2:
                    src = ac[k_idx[k] + rg % k_nslots[k]]
                    for i in range(d):
                        ubuf[i] = src[i]
                else:
                    comp = 0 if kt == 0 else k_idx[k]
                    for i in range(d):
                        ubuf[i] = x[i, comp]
                lk = 0.0
                for i in range(d):
                    lk += h[i] * ubuf[i] * ubuf[i]
                chain_loss[k, rl, c] = 0.5 * lk
                sc = sel[c]
                if sc >= 0:
                    for i in range(d):
                        states[k, sc, rg, i] = ubuf[i]
                if rg == last_record:
                    for i in range(d):
                        final[k, c, i] = ubuf[i]
    rng[c, 0] = s0
    rng[c, 1] = s1
    rng[c, 2] = s2
    rng[c, 3] = s3


@njit(parallel=True, cache=True)
def exact_chains(rng, X, acc, A, L, tr_id, has_S, u0, h, ev_ptr, ev_kind, ev_slot, ev_w,
                 rec_local, rec_global, k_type, k_idx, k_nslots, chain_loss, sel, states, final,
                 last_record):
    r"""Exact transitions between event times for diagonal omega, chains in parallel.

    X (chains, d, p): per coordinate the augmented state :math:`x = (u, [b], e^{(1)}..e^{(m)}, [S])`
    (S: sum of u over the current interval, reset to 0 at every event time). Interval ``it`` moves
    every coordinate by :math:`x \leftarrow A x + L\zeta` with ``A[tr_id[it], i]`` (p, p), ``L`` the
    symmetric square root of the k-step noise covariance and :math:`\zeta` p fresh normals (per
    coordinate, in coordinate order). Then the events of that event time: ev_kind 0 INIT
    slot = w*u0, 1 ADD slot += w*u, 2 ADD slot += w*S; and the record (k_type 0 Last: component 0,
    1 EMA: component k_idx, 2 slot).
    """
    for c in prange(X.shape[0]):
        _exact_chain(c, rng, X, acc, A, L, tr_id, has_S, u0, h, ev_ptr, ev_kind, ev_slot, ev_w,
                     rec_local, rec_global, k_type, k_idx, k_nslots, chain_loss, sel, states, final,
                     last_record)


# ---------------------------------------------------------------------------------------------
# Reductions over chains (deterministic: a fixed serial order per output)
# ---------------------------------------------------------------------------------------------
@njit(cache=True)
def chain_mean_std(chain_loss, n_rec, mean_out, std_out, offset):
    """mean and std (ddof=1; 0 for one chain) over chains of chain_loss[k, r, :] for r < n_rec.

    Two passes in chain order; written to mean_out[k, offset + r], std_out[k, offset + r].
    """
    K = chain_loss.shape[0]
    C = chain_loss.shape[2]
    for kr in range(K * n_rec):
        k = kr // n_rec
        r = kr % n_rec
        row = chain_loss[k, r]
        s = 0.0
        for c in range(C):
            s += row[c]
        mu = s / C
        v = 0.0
        for c in range(C):
            dv = row[c] - mu
            v += dv * dv
        mean_out[k, offset + r] = mu
        std_out[k, offset + r] = math.sqrt(v / (C - 1)) if C > 1 else 0.0
