r"""Controls: the real-network claims' own analysis code run where the claim is true by construction (positive) and
where it is false (negative), each from several independent replicates.

A control hands a claim a :class:`ControlContext` -- the same interface as :class:`.context.RealContext`
(``cfg``, ``out``, ``branch``, ``train_batch_size``, ``sidetrip(name, key, options)``, ``regime()``,
``noise_scale()``) -- whose side-trip results come from the paper's linear model, simulated exactly, instead of
a network; the claim's code (statistic, rule, premises, figure) runs unchanged. A rule whose positive control is
not PASS, or whose negative control is not FAIL, is a defect of the rule.

Controls (:data:`CONTROLS`):

* ``fig2-single-step`` -- the same single step at the training batch size 32 (positive: ~1000 parameters, one
  step fits the batch; negative: 2 parameters, over-determined by the batch, so its step is the population's).
* ``fig13-batch-size`` -- single steps on the paper's linear model (:func:`linear_sweep`: rank-one
  per-example losses, E[a a^T] = I) at a point whose gradient noise scale is ~1000, batches 16 .. 1024.
  Positive: independent held-out batches (a batch's step fits its own
  noise: the training batch drops far more than the others at small batches, less so as the batch grows).
  Negative (correlated batches): the held-out batches share 90 % of the training batch's examples.
* ``eq13-real-sqrt-lr`` -- pairs of SGD chains on a diagonal quadratic :math:`\tfrac12 \sum_i h_i x_i^2` with
  gradient noise :math:`\sigma \xi`, sharing their start and differing only in their noise ("batch order"), run
  long enough at every lr that their distance has levelled off (the premise holds). Positive: the noise of a
  batch gradient, whose scale does not depend on the lr: the stationary radius is :math:`\propto\sqrt{\text{lr}}`
  (Lemma 1). Negative (wrong noise scaling): noise :math:`\propto \text{lr}^{-1/2}`, as if the batch shrank with
  the lr: the radius does not depend on the lr (slope 0).

* ``fig3-same-basin`` -- the linear model (rank-one per-example losses, batch 128) plus a double well in one
  coordinate shared by every example; fixed-batch descents from two checkpoints. Positive: both in one well (no
  barrier). Negative: in opposite wells (the interpolation crosses a barrier of about half the loss).
* ``fig5-averaging-equals-schedule`` -- averages (SWA, EMA, two-point) of K constant-lr steps against side-trips with
  their Table 1 schedules on the same batches. Positive: a diagonal quadratic with lr h K = 0.2 .. 0.4 (Lemma 2's
  regime). Negative: a curved valley (rings :math:`\tfrac w4(|x|^2-1)^2`): averages fall inside the ring.
* ``fig6-two-point-half-lr`` -- A (lr), B (other batches), H (lr/2). Positive: lr h K <= 0.3. Negative: a drifting
  minimum (H lags twice as far as A). Premise built to fail (:data:`PREMISE_CONTROLS`): a branch point outside
  the noise ball, Lemma 2's window closes before the first loss evaluation.
* ``fig7-gradient-alignment`` -- a fixed batch's gradient along constant / linearly decaying lr. Positive: the
  stationary linear model (noise dominates). Negative: a minimum circling in a plane, its pull 5x the noise.
* ``fig8-distance-saturates`` -- the run from 20 stationary radii away, then A and B. Positive: a fixed minimum (the
  distance levels off). Negative: a minimum drifting at constant speed (it keeps falling).
* ``linear-model-fit`` -- the linear-fit side-trip's own computation (:func:`realnet.sidetrips.linear_fit.fit_model`)
  on a torch module whose loss is the linear model. Positive: independent batches. Negative: batches correlated in
  time (AR(1), rho = 0.97).
* ``posthoc-merge-equals-cooldown`` -- the claim's decision (:func:`.posthoc_merge.judge`) on a quadratic's
  checkpoints. Positive: the side-trip runs the realised cooldown. Negative: it runs none (lr x 2). Premise built to
  fail: a fixed batch whose gradient turns with the iterates.

Each control's state is that of :func:`.replication.combine` over its ``replicates`` seeds (the claim's ``scale``):
the value is the replicates' (geometric) mean and the state is decided on its 95 % t interval.

``python -m validation controls --out DIR`` writes ``DIR/controls.json`` (``{"sizes", "environment", "controls":
[records]}``: sizes and seed, package versions and git hash, the
records :class:`ControlRecord`) and ``DIR/controls.md`` (a table); ``reproduce`` runs the controls into
``OUT/controls`` with its real-network claims and includes the table in its report.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sgdtraj.files import atomic_write_text, read_json, write_json
from sgdtraj.outputs import register_kind
from sgdtraj.provenance import environment

from .. import plots
from ..verdict import FAIL, NOT_DECIDED, PASS, Verdict
from .config import RealConfig
from .context import Branch

__all__ = ["CONTROLS_KIND", "ControlContext", "ControlRecord", "ControlSizes", "CONTROLS", "PREMISE_CONTROLS",
           "run_controls", "run_premise_controls", "controls_table", "fixed_batch_landscape", "averaging_landscape",
           "alignment_landscape", "divergence_linear", "linear_fit_quadratic", "posthoc_quadratic",
           "linear_pairs", "linear_sweep", "sweep_gradients", "read_controls"]

#: the output-directory kind of ``validation controls --out``
CONTROLS_KIND = register_kind("controls", "a validation controls directory")


@dataclass(frozen=True)
class ControlSizes:
    """Sizes of the controls: ``replicates`` independent seeds per control (>= 3), and the linear model's
    dimension, steps and recording interval."""

    # 5: with 3 the 95 % t interval (t = 4.30) cannot clear fig. 2's rule on a ratio whose batch-of-32 sampling
    # spread is ~25 % (negative control: mean ~0.95 against 0.5 needs sd < 0.18); with 5 (t = 2.78) it can
    replicates: int = 5
    dim: int = 2000  # high-dimensional like a network's weights: a pair's distance concentrates (relative sd 1.6 %)
    steps: int = 4000
    record_every: int = 100
    seed: int = 0

    @classmethod
    def tiny(cls) -> "ControlSizes":
        return cls(replicates=5, dim=1000, steps=2000, record_every=100)


@dataclass
class ControlRecord:
    """One control of one claim: ``control`` "positive" | "negative" (| "premise": a premise built to fail),
    its ``state`` (of :func:`.replication.combine` over the replicate verdicts: decided on the 95 % t interval),
    ``expected_state`` (PASS | FAIL | NOT DECIDED), ``replicates`` ([{seed, state, value, ...}]), ``description``
    (what makes the claim true or false here), the combined ``value``, its ``interval`` and ``unmet_premises``."""

    claim: str
    control: str
    state: str
    expected_state: str
    replicates: list = field(default_factory=list)
    description: str = ""
    value: float = math.nan  # the combined value (mean, or geometric mean for a log-scale claim)
    interval: list = field(default_factory=list)  # its 95 % t interval over the replicates [low, high]
    unmet_premises: list = field(default_factory=list)  # of the combined verdict (replicates-resolve included)

    def as_expected(self) -> bool:
        return self.state == self.expected_state

    def to_dict(self) -> dict:
        return {**asdict(self), "as_expected": self.as_expected()}


class ControlContext:
    """The interface of :class:`.context.RealContext` over constructed side-trip results: ``results`` maps a
    side-trip name to its result; the regime premises are met by construction (none are added)."""

    def __init__(self, cfg: RealConfig, out, results: dict, step: int = 0, train_batch_size: int = 1,
                 noise_scale=None):
        self.cfg = cfg
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.branch = Branch(step, step)
        self.train_batch_size = int(train_batch_size)
        self.progress = False
        self._results = dict(results)
        self._noise_scale = noise_scale

    def sidetrip(self, name: str, key: str, options: dict | None = None):
        if name not in self._results:
            raise KeyError(f"this control constructs no {name!r} side-trip (has: {sorted(self._results)})")
        return self._results[name]

    def regime(self) -> list:
        return []

    def noise_scale(self):
        if self._noise_scale is None:
            raise KeyError("this control constructs no noise scale")
        return self._noise_scale


# ======================================================================================= the linear model
def linear_pairs(lr: float, factors, steps: int, record_every: int, dim: int, seed: int,
                 noise_lr_exponent: float = 0.0):
    """Pairs of SGD chains x <- x - lam (h * x + sigma xi) on a diagonal quadratic (curvatures h uniform in
    [1, 1.25], xi ~ N(0, I), sigma = (lam / lr)^e with e = ``noise_lr_exponent``), one pair per lr lam = lr * f
    (f = 1 and ``factors``), both members from the same start x = 0 with independent noise. Returns a
    :class:`realnet.sidetrips.divergence.PairDistances` table (``dist_function`` NaN) of the members' distance
    every ``record_every`` steps and at ``steps``."""
    from realnet.sidetrips.divergence import PairDistances

    rng = np.random.default_rng(seed)
    h = rng.uniform(1.0, 1.25, size=dim)
    fs = [1.0] + [float(f) for f in factors]
    rows = []
    for f in fs:
        lam = lr * f
        sigma = f ** noise_lr_exponent
        x = np.zeros((2, dim))
        rows.append([0, f, lam, 0.0, math.nan])
        for t in range(1, steps + 1):
            x -= lam * (h * x + sigma * rng.normal(size=(2, dim)))
            if t % record_every == 0 or t == steps:
                rows.append([t, f, lam, float(np.linalg.norm(x[0] - x[1])), math.nan])
    return PairDistances(*zip(*rows))


@dataclass(frozen=True)
class _PairsResult:
    """The fields of a divergence result that ``eq13-real-sqrt-lr`` reads."""

    pair_distances: object
    steps: int
    pair_train_loss_quarters: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)


def _eq13_control(positive: bool, sizes: ControlSizes, seed: int, out: Path) -> Verdict:
    from .stationary_radius import EQ13_REAL

    cfg = RealConfig(eq13_factors=[0.5, 0.25, 0.125, 0.0625])
    table = linear_pairs(0.08, cfg.eq13_factors, sizes.steps, sizes.record_every, sizes.dim, seed,
                         noise_lr_exponent=0.0 if positive else -0.5)
    ctx = ControlContext(cfg, out, {"divergence": _PairsResult(table, sizes.steps)})
    return EQ13_REAL.evaluate(ctx)


@dataclass(frozen=True)
class _Curve:
    """The columns of an lr-sweep curve (:class:`realnet.sidetrips.lr_sweep.LrSweepCurve`)."""

    lr: np.ndarray
    train_loss: np.ndarray
    heldout_mean: np.ndarray
    heldout_std: np.ndarray
    heldout_min: np.ndarray
    heldout_max: np.ndarray


@dataclass(frozen=True)
class _SweepResult:
    """The fields of an lr-sweep result that ``fig13-batch-size`` reads."""

    batch_size: int
    train_start_loss: float
    train_min_loss: float
    best_lr_train: float
    heldout_start_loss: float
    heldout_min_loss: float
    best_lr_heldout: float
    curve: _Curve


def linear_sweep(batch_size: int, delta, heldout_batches: int, rng, shared: float = 0.0, noise: float = 0.1,
                 lrs=None) -> _SweepResult:
    """One single-step lr sweep on the paper's linear model (sec. 4): per-example loss 1/2 (a_i . x - c_i)^2 with
    a_i ~ N(0, I) (so E[a a^T] = I), c_i = a_i . x* + eps_i, eps_i ~ N(0, ``noise``^2), at the point x = x* +
    ``delta``. The step is along the training batch's gradient; losses of that batch and the mean of
    ``heldout_batches`` others (a fraction ``shared`` of each held-out batch's examples taken from the training
    batch: correlated batches). ``lrs``: the grid (default lr = 0 and 1e-6 .. 10, 71 points). With d = len(delta)
    the batch's gradient has norm ~ sqrt(d / b) |residual|, a step of b / d fits the batch, and the noise scale is
    tr(Sigma) / |G|^2 ~ d (|delta|^2 + noise^2) / |delta|^2 (:func:`sweep_gradients`)."""
    delta = np.asarray(delta, float)
    d = delta.size
    lrs = np.concatenate([[0.0], np.geomspace(1e-6, 10.0, 71)]) if lrs is None else np.asarray(lrs)

    def batch():  # (a, residual at x): residual_i = a_i . delta - eps_i
        a = rng.normal(size=(batch_size, d))
        return a, a @ delta - noise * rng.normal(size=batch_size)

    def losses(a, r, g):  # batch loss along x - lam g, every lam
        return 0.5 * ((r[None, :] - lrs[:, None] * (a @ g)[None, :]) ** 2).mean(1)

    a_tr, r_tr = batch()
    g = a_tr.T @ r_tr / batch_size
    tr = losses(a_tr, r_tr, g)
    n_shared = int(round(shared * batch_size))
    held = []
    for _ in range(heldout_batches):
        a, r = batch()
        a[:n_shared], r[:n_shared] = a_tr[:n_shared], r_tr[:n_shared]
        held.append(losses(a, r, g))
    held = np.array(held)
    ho = held.mean(0)
    it, ih = int(np.argmin(tr)), int(np.argmin(ho))
    curve = _Curve(lrs, tr, ho, held.std(0), held.min(0), held.max(0))
    return _SweepResult(batch_size=batch_size, train_start_loss=float(tr[0]), train_min_loss=float(tr[it]),
                        best_lr_train=float(lrs[it]), heldout_start_loss=float(ho[0]),
                        heldout_min_loss=float(ho[ih]), best_lr_heldout=float(lrs[ih]), curve=curve)


def sweep_gradients(delta, n: int, batch_size: int, rng, noise: float = 0.1) -> np.ndarray:
    """``n`` batch gradients of ``batch_size`` examples of :func:`linear_sweep`'s model at x* + ``delta``."""
    delta = np.asarray(delta, float)
    out = []
    for _ in range(n):
        a = rng.normal(size=(batch_size, delta.size))
        out.append(a.T @ (a @ delta - noise * rng.normal(size=batch_size)) / batch_size)
    return np.array(out)


def _sweep_point(sizes: ControlSizes, rng, factor: float = 0.5) -> np.ndarray:
    """delta with |delta| = 1 in ``factor * sizes.dim`` dimensions: noise scale ~ d (1 + 0.01) (~1000 at the
    default)."""
    d = max(100, int(factor * sizes.dim))
    delta = rng.normal(size=d)
    return delta / np.linalg.norm(delta)


class _SweepContext(ControlContext):
    """lr-sweep requests answered per batch size (the key names the batch)."""

    def sidetrip(self, name: str, key: str, options: dict | None = None):
        return self._results[(name, int((options or {})["batch_size"]))]


def _fig13_control(positive: bool, sizes: ControlSizes, seed: int, out: Path) -> Verdict:
    from realnet.regime import noise_scale_from_gradients

    from .single_step import FIG13

    rng = np.random.default_rng(seed)
    # noise scale ~4 sizes.dim: three batches (16, 32, 64) lie in the typical range (<= B_noise / 16), so the
    # median over them is stable enough for 3 replicates' interval to clear the rule
    delta = _sweep_point(sizes, rng, factor=min(4.0, 4000 / sizes.dim))
    b_noise = delta.size * 1.01  # d (|delta|^2 + noise^2) / |delta|^2
    batches = sorted({16, 32, 64, int(2 ** round(math.log2(b_noise)))})
    cfg = RealConfig(sweep_batch_sizes=batches, sweep_heldout_batches=10)
    results = {("lr-sweep", b): linear_sweep(b, delta, cfg.sweep_heldout_batches, rng, shared=0.0 if positive else 0.9)
               for b in cfg.sweep_batch_sizes}
    # the noise scale measured like realnet.regime.gradient_noise_scale: 64 batch gradients of 32 at the point
    ns = noise_scale_from_gradients(sweep_gradients(delta, 64, 32, rng), 32)
    return FIG13.evaluate(_SweepContext(cfg, out, results, noise_scale=ns))


def _fig2_control(positive: bool, sizes: ControlSizes, seed: int, out: Path) -> Verdict:
    from .single_step import FIG2

    rng = np.random.default_rng(seed)
    cfg = RealConfig(sweep_heldout_batches=10)
    if positive:
        delta = _sweep_point(sizes, rng)
    else:  # 2 parameters: a batch of 32 over-determines them, its step is nearly the population's step
        delta = rng.normal(size=2)
        delta /= np.linalg.norm(delta)
    sweep = linear_sweep(32, delta, cfg.sweep_heldout_batches, rng)
    return FIG2.evaluate(_SweepContext(cfg, out, {("lr-sweep", 32): sweep}, train_batch_size=32))


# ======================================================================================= shared numerics
def _stationary(h, lr: float, sigma: float, rng) -> np.ndarray:
    """A draw from the stationary law of x <- x - lr (h x + sigma xi) (coordinate variance lr sigma^2 / (h (2 - lr
    h)))."""
    return rng.normal(size=h.size) * np.sqrt(lr * sigma ** 2 / (h * (2.0 - lr * h)))


def _sgd(x, h, lrs, noise, centre=None) -> np.ndarray:
    """Iterates x_0 .. x_n of x <- x - lr_t (h (x - c_t) + noise_t) on a diagonal quadratic (``centre``: (n, d)
    minimum of each step, default 0); shape (n + 1, d)."""
    out = np.empty((len(lrs) + 1, x.size))
    out[0] = x
    for t, lr in enumerate(lrs):
        c = 0.0 if centre is None else centre[t]
        out[t + 1] = out[t] - lr * (h * (out[t] - c) + noise[t])
    return out


def _cos_rows(G, g0) -> np.ndarray:
    return G @ g0 / (np.linalg.norm(G, axis=-1) * np.linalg.norm(g0))


# ======================================================================================= fig. 3
@dataclass(frozen=True)
class _FixedBatchView:
    """The fields of a fixed-batch result (:class:`realnet.sidetrips.fixed_batch.FixedBatchResult`) that
    ``fig3-same-basin`` reads."""

    lr: float
    train_loss_first: np.ndarray
    train_loss_second: np.ndarray
    heldout_loss_first: np.ndarray
    heldout_loss_second: np.ndarray
    train_barrier: np.ndarray
    heldout_barrier: np.ndarray
    interpolation: object


def fixed_batch_landscape(same_basin: bool, d: int, batch_size: int, gd_steps: int, alphas, heldout_batches: int,
                          rng, well: float = 0.5, noise: float = 0.1) -> _FixedBatchView:
    r"""Fig. 3's side-trip on the paper's linear model (per-example loss :math:`\tfrac12(a_i\cdot x - c_i)^2`, a_i ~
    N(0, I) in coordinates 1..d-1, c_i = eps_i ~ N(0, ``noise``^2)) plus a double well :math:`w(1 - s^2)^2` in
    coordinate s = x_0 shared by every example (``well`` = w: the barrier between the wells). The two checkpoints
    are stationary draws (|x| ~ 1) with s = 1 + 0.1 xi; ``same_basin``: both in the well s = +1, else the second in
    s = -1. From each, ``gd_steps`` steps of gradient descent on one batch of ``batch_size`` at its best single-step
    lr (grid 1e-3 .. 1e2, as the side-trip); losses along (1 - alpha) P1_j + alpha P2_j of that batch and of
    ``heldout_batches`` others; barrier = max over alpha - the larger end (the side-trip's definition)."""
    from realnet.sidetrips.fixed_batch import FixedBatchInterpolation

    def batch():
        a = rng.normal(size=(batch_size, d))
        a[:, 0] = 0.0
        return a, noise * rng.normal(size=batch_size)

    def loss(b, X):  # X: (n, d)
        a, c = b
        return 0.5 * ((X @ a.T - c) ** 2).mean(1) + well * (1.0 - X[:, 0] ** 2) ** 2

    def grad(b, x):
        a, c = b
        g = a.T @ (a @ x - c) / len(c)
        g[0] += -4.0 * well * x[0] * (1.0 - x[0] ** 2)
        return g

    starts = []
    for sign in (1.0, 1.0 if same_basin else -1.0):
        x = rng.normal(size=d) / math.sqrt(d)
        x[0] = sign * (1.0 + 0.1 * rng.normal())
        starts.append(x)
    fixed = batch()
    held = [batch() for _ in range(heldout_batches)]
    grid = np.geomspace(1e-3, 1e2, 31)
    g0 = grad(fixed, starts[0])
    lr = float(grid[int(np.nanargmin(loss(fixed, starts[0][None, :] - grid[:, None] * g0[None, :])))])
    P = []
    for x in starts:
        pts = [x]
        for _ in range(gd_steps):
            pts.append(pts[-1] - lr * grad(fixed, pts[-1]))
        P.append(pts)
    alphas = np.asarray(alphas, float)
    rows, per = [], {k: [] for k in ("tf", "ts", "hf", "hs", "tb", "hb")}
    for j in range(gd_steps + 1):
        X = (1.0 - alphas)[:, None] * P[0][j][None, :] + alphas[:, None] * P[1][j][None, :]
        tr = loss(fixed, X)
        ho = np.array([loss(b, X) for b in held])
        hm = ho.mean(0)
        for i, a in enumerate(alphas):
            rows.append([j, a, tr[i], hm[i], ho[:, i].std(), ho[:, i].min(), ho[:, i].max()])
        per["tf"].append(tr[0])
        per["ts"].append(tr[-1])
        per["hf"].append(hm[0])
        per["hs"].append(hm[-1])
        per["tb"].append(tr.max() - max(tr[0], tr[-1]))
        per["hb"].append(hm.max() - max(hm[0], hm[-1]))
    a = {k: np.array(v) for k, v in per.items()}
    return _FixedBatchView(lr=lr, train_loss_first=a["tf"], train_loss_second=a["ts"], heldout_loss_first=a["hf"],
                           heldout_loss_second=a["hs"], train_barrier=a["tb"], heldout_barrier=a["hb"],
                           interpolation=FixedBatchInterpolation(*zip(*rows)))


def _fig3_control(positive: bool, sizes: ControlSizes, seed: int, out: Path) -> Verdict:
    cfg = RealConfig()
    rng = np.random.default_rng(seed)
    view = fixed_batch_landscape(positive, max(100, sizes.dim // 2), cfg.sweep_batch_size, cfg.fixed_batch_gd_steps,
                                 np.linspace(0.0, 1.0, cfg.fixed_batch_alphas), cfg.fixed_batch_heldout_batches, rng)
    return _claim("fig3-same-basin").evaluate(ControlContext(cfg, out, {"fixed-batch": view}, step=0))


# ======================================================================================= fig. 5, fig. 7
class _Landscape:
    """A loss on R^d for the averaging and alignment controls: ``grad(x, t)`` the population gradient at step t
    (a drifting minimum moves with t), ``loss(x, t)`` the population (validation) loss, ``train_loss(x, t)`` that
    of a fixed training subset (its minimum offset by ``train_offset``); SGD adds ``sigma`` xi_t."""

    def __init__(self, d: int, sigma: float, rng, *, h=None, rings: bool = False, ring_well: float = 0.0,
                 drift=None, loss_floor: float = 1.0, train_offset: float = 0.0):
        self.d, self.sigma, self.h, self.rings, self.w = d, float(sigma), h, rings, float(ring_well)
        self.drift = drift  # t -> (d,) minimum (None: 0)
        self.floor = float(loss_floor)
        self.offset = train_offset * rng.normal(size=d)

    def centre(self, t):
        return 0.0 if self.drift is None else self.drift(t)

    def grad(self, x, t):
        if self.rings:  # w/4 (rho^2 - 1)^2 per coordinate pair
            p = x.reshape(-1, 2)
            return (self.w * ((p ** 2).sum(1) - 1.0)[:, None] * p).ravel()
        return self.h * (x - self.centre(t))

    def _value(self, x, t, train: bool):
        if self.rings:  # the training subset's rings: radius^2 1.02
            p = x.reshape(-1, 2)
            r2 = 1.02 if train else 1.0
            return self.floor + float(np.mean(self.w / 4.0 * ((p ** 2).sum(1) - r2) ** 2))
        off = self.offset if train else 0.0
        return self.floor + float(np.mean(0.5 * self.h * (x - self.centre(t) - off) ** 2))

    def loss(self, x, t=0):
        return self._value(x, t, False)

    def train_loss(self, x, t=0):
        return self._value(x, t, True)

    def run(self, x, lrs, noise, t0: int = 0) -> np.ndarray:
        """SGD iterates x_0 .. x_n with per-step lrs and noise (n, d) (the same noise: the same batches)."""
        out = np.empty((len(lrs) + 1, x.size))
        out[0] = x
        for i, lr in enumerate(lrs):
            out[i + 1] = out[i] - lr * (self.grad(out[i], t0 + i) + noise[i])
        return out


def _kernel_average(X: np.ndarray, kernel, k: int) -> np.ndarray:
    """The kernel's average of the iterates X[0..k] at step k (weight beyond lag k-1 on X[0], the checkpoint: an
    average started at theta_S)."""
    w = np.asarray(kernel.weights(k), float)
    rest = 1.0 - w.sum()
    return w @ X[k:0:-1] + rest * X[0]


@dataclass(frozen=True)
class _AveragingView:
    """The fields of an averaging result (:class:`realnet.sidetrips.kernel_averages.AveragingResult`) that
    ``fig5-averaging-equals-schedule`` reads."""

    trajectory: list
    kernels: dict


def averaging_landscape(land: _Landscape, x_S, lr: float, K: int, specs, report, rng) -> _AveragingView:
    """The averaging side-trip on ``land``: K constant-lr steps from ``x_S``; per kernel spec and reported k its
    average (:func:`_kernel_average`) and the side-trip from ``x_S`` with its equivalent schedule (Table 1,
    :func:`realnet.averaging.equivalent_multipliers`) on the same noise (the same batches)."""
    from realnet.averaging import equivalent_multipliers
    from realnet.sidetrips import Metrics
    from realnet.sidetrips.kernel_averages import KernelPoint, KernelResults, TrajectoryPoint, kernel_at

    nan = math.nan
    noise = land.sigma * rng.normal(size=(K, land.d))
    X = land.run(x_S, np.full(K, lr), noise)

    def metrics(x, k):
        return Metrics(train_loss=land.train_loss(x, k), train_acc=nan, val_loss=land.loss(x, k), val_acc=nan)

    traj = [TrajectoryPoint(k=k, train_loss=land.train_loss(X[k], k), train_acc=nan, val_loss=land.loss(X[k], k),
                            val_acc=nan, l2_from_start=float(np.linalg.norm(X[k] - x_S))) for k in [0] + list(report)]
    kernels = {}
    for spec in specs:
        pts, skipped = [], []
        for k in report:
            kern = kernel_at(spec, k)
            if kern is None:
                skipped.append(k)
                continue
            avg = _kernel_average(X, kern, k)
            side = land.run(x_S, lr * equivalent_multipliers(kern, k), noise[:k])[-1]
            dist = float(np.linalg.norm(avg - side))
            da, ds = float(np.linalg.norm(avg - x_S)), float(np.linalg.norm(side - x_S))
            pts.append(KernelPoint(k=k, kernel=repr(kern), average=metrics(avg, k), sidetrip=metrics(side, k),
                                   l2_distance=dist, l2_average_from_start=da, l2_sidetrip_from_start=ds,
                                   relative_l2=dist / ds if ds > 0 else None))
        kernels[spec] = KernelResults(spec=spec, results=pts, skipped=skipped)
    return _AveragingView(trajectory=traj, kernels=kernels)


def alignment_landscape(land: _Landscape, x_S, lr: float, K: int, batch_size: int, batch_pairs: int, rng,
                        record_every: int = 10):
    """The alignment side-trip (:class:`realnet.sidetrips.alignment.AlignmentResult`) on ``land``: a fixed batch
    b whose gradient is grad(x) + sigma zeta_b (zeta_b fixed), along K steps at constant lr and at lr (K - t) / K
    from ``x_S`` (the same batches), recorded every ``record_every`` steps; the cosines of ``batch_pairs`` + 1
    different batches' gradients at ``x_S`` (all pairs)."""
    from realnet.sidetrips.alignment import AlignmentRecords, AlignmentResult, DifferentBatches

    noise = land.sigma * rng.normal(size=(K, land.d))
    zeta = land.sigma * rng.normal(size=land.d)
    lr_c, lr_l = np.full(K, lr), lr * (K - np.arange(K)) / K
    Xc, Xl = land.run(x_S, lr_c, noise), land.run(x_S, lr_l, noise)
    ts = np.unique(np.r_[0, np.arange(record_every, K + 1, record_every), K])

    def fixed(x, t):
        g = land.grad(x, t) + zeta
        return g, land.loss(x, t) + float(np.mean(zeta * (x - land.centre(t))))

    g0, _ = fixed(x_S, 0)
    rows = []
    for t in ts:
        gc, lc = fixed(Xc[t], t)
        gl, ll = fixed(Xl[t], t)
        tb = land.grad(Xc[t], t) + noise[min(t, K - 1)]
        n0 = np.linalg.norm(g0)
        rows.append([t, t, lr, lr_l[min(t, K - 1)], _cos(gc, g0), _cos(gl, g0), np.linalg.norm(gc) / n0,
                     np.linalg.norm(gl) / n0, _cos(gc, gl), np.linalg.norm(gl) / np.linalg.norm(gc),
                     _cos(tb, gc), _cos(land.grad(Xl[t], t) + noise[min(t, K - 1)], gl), lc, ll,
                     land.loss(Xc[t], t), land.loss(Xl[t], t), float(np.linalg.norm(Xc[t] - Xl[t]))])
    rec = AlignmentRecords(*zip(*rows))
    gs = [land.grad(x_S, 0) + land.sigma * rng.normal(size=land.d) for _ in range(batch_pairs + 1)]
    pc = np.array([_cos(gs[i], gs[j]) for i in range(len(gs)) for j in range(i + 1, len(gs))])
    return AlignmentResult(
        run="linear model", step=0, lr=lr, steps=K, batch_size=batch_size, fixed_batch="train",
        fixed_grad_norm_start=float(np.linalg.norm(g0)), final={},
        min_cos_start_constant=float(rec.cos_start_constant.min()),
        min_cos_start_linear=float(rec.cos_start_linear.min()),
        mean_cos_train_vs_fixed=float(np.mean(rec.cos_train_vs_fixed_constant)),
        different_batches=DifferentBatches(cos_mean=float(pc.mean()), cos_std=float(pc.std()),
                                           cos_abs_max=float(np.abs(pc).max()), n_pairs=int(pc.size)),
        records=rec)


def _cos(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _fig5_control(positive: bool, sizes: ControlSizes, seed: int, out: Path) -> Verdict:
    from .requests import averaging_request

    cfg = RealConfig()
    rng = np.random.default_rng(seed)
    d = max(100, sizes.dim // 2) * 2
    K = cfg.averaging_steps
    report = averaging_request(cfg)[2]["report_steps"]
    lr = 0.1
    if positive:  # the linear model: lr h K = 0.2 .. 0.4 (inside Lemma 2's window)
        h = rng.uniform(0.02, 0.04, size=d)
        # irreducible loss: the stationary loss lr sigma^2 / 4 per coordinate
        land = _Landscape(d, 1.0, rng, h=h, loss_floor=lr / 4.0, train_offset=0.1)
        x_S = _stationary(h, lr, 1.0, rng)
    else:  # rings: radial curvature 2 w = 1 / lr, angular steps lr sigma = 0.2 rad
        land = _Landscape(d, 2.0, rng, rings=True, ring_well=0.5 / lr, loss_floor=0.01)
        phi = rng.uniform(0.0, 2 * math.pi, size=d // 2)
        x0 = np.stack([np.cos(phi), np.sin(phi)], 1).ravel()
        x_S = land.run(x0, np.full(50, lr), land.sigma * rng.normal(size=(50, d)))[-1]  # radial equilibrium
    results = {"averaging": averaging_landscape(land, x_S, lr, K, cfg.averaging_kernels, report, rng),
               "alignment": alignment_landscape(land, x_S, lr, cfg.alignment_steps, cfg.batch_size,
                                                cfg.alignment_batch_pairs, rng)}
    return _claim("fig5-averaging-equals-schedule").evaluate(ControlContext(cfg, out, results))


def _fig7_control(positive: bool, sizes: ControlSizes, seed: int, out: Path) -> Verdict:
    cfg = RealConfig()
    rng = np.random.default_rng(seed)
    d = max(100, sizes.dim // 2)
    K, lr = cfg.alignment_steps, 0.1
    h = rng.uniform(0.5, 1.0, size=d)
    sigma = 1.0
    if positive:  # stationary linear model: the batch noise dominates the gradient (lr h / 2 <= 0.05)
        land = _Landscape(d, sigma, rng, h=h, loss_floor=1.0)
        x_S = _stationary(h, lr, sigma, rng)
    else:  # the minimum circles in a plane (half a turn over the side-trip), its pull 5x the batch noise
        h[:2] = 3.0 / (lr * K)
        omega = math.pi / K
        lag = omega / math.hypot(lr * h[0], omega)  # |x - centre| / radius when tracking
        R = 5.0 * sigma * math.sqrt(d) / (h[0] * lag)

        def drift(t):
            c = np.zeros(d)
            c[:2] = R * math.cos(omega * t), R * math.sin(omega * t)
            return c

        land = _Landscape(d, sigma, rng, h=h, drift=drift, loss_floor=1.0)
        burn = int(10 / (lr * h[0]))
        x_S = land.run(drift(-burn), np.full(burn, lr), sigma * rng.normal(size=(burn, d)), t0=-burn)[-1]
    res = alignment_landscape(land, x_S, lr, K, cfg.batch_size, cfg.alignment_batch_pairs, rng)
    return _claim("fig7-gradient-alignment").evaluate(ControlContext(cfg, out, {"alignment": res}))


# ======================================================================================= fig. 6, fig. 8
@dataclass(frozen=True)
class _DivergenceView:
    """The fields of a divergence result (:class:`realnet.sidetrips.divergence.DivergenceResult`) that
    ``fig6-two-point-half-lr`` and ``fig8-distance-saturates`` read."""

    steps: int
    distances: object
    evaluations: object
    fixed_batch_track: object
    endpoint_distances: object
    checkpoint_distances: object
    twopoint_to_half_vs_A_B: float
    fixed_batch_size: int = 0
    fixed_batch_seed: int = 0


def divergence_linear(h, lr: float, sigma: float, x_S, K: int, record_every: int, eval_steps, rng,
                      run=None, centre=None, batch_size: int = 32, S: int = 0) -> _DivergenceView:
    r"""The divergence side-trip on the diagonal quadratic :math:`\tfrac12\sum_i h_i (x_i - c_i)^2` with batch
    noise :math:`\sigma\xi`: A (lr, noise sequence 1), B (lr, sequence 2), H (lr / 2, sequence 1) for K steps from
    ``x_S``; distances every ``record_every`` steps, validation loss (the population loss + lr sigma^2 / 4 per
    coordinate) at ``eval_steps``, a fixed held-out batch (gradient h (x - c) + sigma zeta) along A, B, H.
    ``run``: (steps, iterates) of the run before S (its checkpoints vs B's end point); ``centre``: (K, d) minimum
    per step (a drifting minimum; default 0)."""
    from realnet.sidetrips.divergence import (
        CheckpointDistances,
        DivergenceDistances,
        DivergenceEvaluations,
        DivergenceFixedBatch,
        EndpointDistances,
    )

    d = x_S.size
    n1, n2 = sigma * rng.normal(size=(K, d)), sigma * rng.normal(size=(K, d))
    A = _sgd(x_S, h, np.full(K, lr), n1, centre)
    B = _sgd(x_S, h, np.full(K, lr), n2, centre)
    H = _sgd(x_S, h, np.full(K, lr / 2), n1, centre)
    C = np.zeros((K + 1, d)) if centre is None else np.vstack([centre[:1], centre])
    two = 0.5 * (x_S[None, :] + A)
    ts = np.unique(np.r_[0, np.arange(record_every, K + 1, record_every), K])
    nrm = np.linalg.norm
    dist = DivergenceDistances(
        t=ts, step=S + ts, lr=[lr if t < K else math.nan for t in ts], dist_A_B=nrm(A[ts] - B[ts], axis=1),
        dist_twopoint_H=nrm(two[ts] - H[ts], axis=1), dist_A_H=nrm(A[ts] - H[ts], axis=1),
        dist_A_start=nrm(A[ts] - x_S, axis=1), dist_B_start=nrm(B[ts] - x_S, axis=1),
        dist_H_start=nrm(H[ts] - x_S, axis=1), dist_twopoint_start=nrm(two[ts] - x_S, axis=1))
    floor = lr * sigma ** 2 / 4.0

    def loss(X, t):
        return floor + float(np.mean(0.5 * h * (X[t] - C[t]) ** 2))

    ev = [[t, m, math.nan, math.nan, loss(X, t), math.nan] for t in sorted(set(eval_steps))
          for m, X in (("A", A), ("B", B), ("H", H), ("twopoint", two))]
    zeta = sigma * rng.normal(size=d)
    fb = []
    for m, X in (("A", A), ("B", B), ("H", H)):
        G = h * (X[ts] - C[ts]) + zeta
        g0 = G[0]
        for t, g in zip(ts, G):
            fb.append([t, m, loss(X, t), float(nrm(g)), _cos(g, g0)])
    snaps = np.unique(np.linspace(0, K, 13).astype(int))
    endp = EndpointDistances(t=snaps, step=S + snaps, dist_to_B_end=nrm(A[snaps] - B[-1], axis=1),
                             dist_to_A_end=nrm(A[snaps] - A[-1], axis=1))
    if run is None:
        ck = CheckpointDistances(step=[], dist_to_B_end=[], dist_to_A_end=[])
    else:
        steps, X = run
        ck = CheckpointDistances(step=steps, dist_to_B_end=nrm(X - B[-1], axis=1), dist_to_A_end=nrm(X - A[-1], axis=1))
    return _DivergenceView(steps=K, distances=dist, evaluations=DivergenceEvaluations(*zip(*ev)),
                           fixed_batch_track=DivergenceFixedBatch(*zip(*fb)), endpoint_distances=endp,
                           checkpoint_distances=ck,
                           twopoint_to_half_vs_A_B=float(nrm(two[-1] - H[-1]) / nrm(A[-1] - B[-1])),
                           fixed_batch_size=batch_size)


def _fig6_control(positive: bool, sizes: ControlSizes, seed: int, out: Path, far_start: bool = False) -> Verdict:
    """``far_start``: the premise built to fail (the negative's curvature, no drift, a branch point far outside the
    noise ball: the fixed batch's gradient shrinks as the side-trips descend, Lemma 2's window closes at once)."""
    from .requests import divergence_request

    cfg = RealConfig()
    opts = divergence_request(cfg)[2]
    rng = np.random.default_rng(seed)
    d, lr, K = max(100, sizes.dim // 2), 0.1, cfg.divergence_steps
    centre = None
    if positive:  # lr h = 5e-4 .. 1e-3, lr h K <= 0.3: the gradient barely changes over the side-trips (Lemma 2)
        h = rng.uniform(0.005, 0.01, size=d)
        x_S = _stationary(h, lr, 1.0, rng)
    else:  # lr h = 0.05 .. 0.1, the minimum drifting by 0.1 lr sigma sqrt(d) per step: H lags twice as far as A
        h = rng.uniform(0.5, 1.0, size=d)
        x_S = _stationary(h, lr, 1.0, rng)
        if far_start:
            x_S = x_S + 3.0 / h * rng.normal(size=d)
        else:
            u = rng.normal(size=d)
            v = 0.1 * lr * u / np.linalg.norm(u) * math.sqrt(d)
            centre = np.arange(1, K + 1)[:, None] * v[None, :]
            x_S = x_S - v / (lr * h)  # tracking the minimum at S
    view = divergence_linear(h, lr, 1.0, x_S, K, opts["record_every"], opts["eval_steps"], rng, centre=centre,
                             batch_size=cfg.batch_size)
    return _claim("fig6-two-point-half-lr").evaluate(ControlContext(cfg, out, {"divergence": view}))


def _fig8_control(positive: bool, sizes: ControlSizes, seed: int, out: Path) -> Verdict:
    from .requests import divergence_request

    cfg = RealConfig()
    opts = divergence_request(cfg)[2]
    rng = np.random.default_rng(seed)
    d, lr = max(100, sizes.dim // 2), 0.1
    K = cfg.divergence_steps
    S = 2 * K
    h = rng.uniform(0.2, 0.4, size=d)  # lr h = 0.02 .. 0.04: the run forgets its start in ~250 steps
    r = math.sqrt(np.sum(lr / (h * (2 - lr * h))))  # the stationary radius
    if positive:  # from 20 radii away to the fixed minimum's noise ball
        x0, centre = 20.0 * r * rng.normal(size=d) / math.sqrt(d), None
    else:  # the minimum drifts at a constant speed: the distance keeps falling to the end
        u = rng.normal(size=d)
        u /= np.linalg.norm(u)
        v = 20.0 * r / (S + K)
        x0, centre = np.zeros(d), (np.arange(1, S + K + 1)[:, None] * v) * u[None, :]
    run = _sgd(x0, h, np.full(S, lr), rng.normal(size=(S, d)), None if centre is None else centre[:S])
    steps = np.unique(np.linspace(0, S, 7).astype(int))
    view = divergence_linear(h, lr, 1.0, run[-1], K, opts["record_every"], opts["eval_steps"], rng,
                             run=(steps, run[steps]), centre=None if centre is None else centre[S:],
                             batch_size=cfg.batch_size, S=S)
    return _claim("fig8-distance-saturates").evaluate(ControlContext(cfg, out, {"divergence": view}, step=S))


# ======================================================================================= linear-model-fit
def linear_fit_quadratic(seed: int, correlation: float = 0.0, steps: int = 0, noise_batches: int = 400):
    r"""The linear-fit side-trip's own computation (:func:`realnet.sidetrips.linear_fit.fit_model` and
    ``build_result``: Lanczos, Rayleigh quotients, noise, continuation, measurement) on a torch module whose loss is
    the linear model: per example :math:`\tfrac12\theta^\top A\theta - b^\top\theta` (Hessian A with top
    eigenvalues 8 .. 0.4, weight decay 0.02; the batch mean's noise covariance C), SGD with momentum 0.9 at lr 0.05,
    batches of 4. ``correlation`` rho: the continuation's batches are correlated in time (b_t = rho b_{t-1} +
    sqrt(1 - rho^2) e_t, the same marginal law as the fresh batches the noise is measured on)."""
    import torch
    from torch import nn

    from realnet.sidetrips.linear_fit import LinearFitOptions, build_result, fit_model

    class QuadraticNet(nn.Module):
        def __init__(self, A):
            super().__init__()
            self.theta = nn.Parameter(torch.zeros(A.shape[0], dtype=torch.float64))
            self.register_buffer("A", torch.tensor(A))

        def forward(self, b):
            return 0.5 * self.theta @ (self.A @ self.theta) - b @ self.theta

    d, B, lr, beta, wd = 40, 4, 0.05, 0.9, 0.02
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.concatenate([[8.0, 4.0, 2.0, 1.0, 0.6, 0.4], rng.uniform(0.01, 0.1, d - 6)])
    A = (U * lam) @ U.T
    A = 0.5 * (A + A.T)
    Gm = rng.normal(size=(d, d))
    C = Gm @ Gm.T / d + 0.2 * np.eye(d)
    chol = torch.linalg.cholesky(torch.tensor(C * B))
    gen = torch.Generator().manual_seed(seed + 1)

    def batches(n, size, rho=0.0):
        e = None
        for _ in range(n):
            z = torch.randn(size, d, generator=gen, dtype=torch.float64)
            e = z if e is None or rho == 0.0 else rho * e + math.sqrt(1.0 - rho ** 2) * z
            yield e @ chol.T, torch.zeros(size)

    net = QuadraticNet(A)
    buf = torch.zeros(d, dtype=torch.float64)

    def update(x, y):  # torch.optim.SGD(lr, momentum, weight_decay) written out: the gradient is known
        with torch.no_grad():
            th = net.theta
            At = net.A @ th
            g = At - x.mean(0) + wd * th
            buf.mul_(beta).add_(g)
            loss = 0.5 * th @ At - x.mean(0) @ th
            th.sub_(lr * buf)
        return loss

    o = LinearFitOptions(k=6, bn_mode="eval", lanczos_tol=1e-12, curvature_batches=2, noise_batches=noise_batches,
                         steps=steps, burn_in=300, lags=5, kernels=["ema:0.1", "twopoint:10", "swa:10"], n_boot=200)
    sample = (torch.zeros(8, d, dtype=torch.float64), torch.zeros(8))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fit = fit_model(net, sample, batches(o.curvature_batches, B), batches(o.noise_batches, B),
                        batches(o.burn_in + o.resolved_steps(), B, correlation), update, lr=lr, momentum=beta,
                        weight_decay=wd, batch_size=B, options=o, loss_fn=lambda out, y: out.sum())
    return build_result(fit, o, run="linear model", step=0, batch_size=B)


def _linear_fit_control(positive: bool, sizes: ControlSizes, seed: int, out: Path) -> Verdict:
    res = linear_fit_quadratic(seed, correlation=0.0 if positive else 0.97)
    ctx = ControlContext(RealConfig(), out, {"linear-fit": res}, train_batch_size=res.batch_size)
    # the request reads the run's batch size from its config: a run directory holding only that
    ctx.run_dir = ctx.out / "run"
    write_json(ctx.run_dir / "config.json", {"batch_size": res.batch_size})
    return _claim("linear-model-fit").evaluate(ctx)


# ======================================================================================= posthoc merge
def posthoc_quadratic(seed: int, side_multipliers=None, fixed_scale: float = 1.0, d: int = 200, lr: float = 5e-4,
                      n_val: int = 4000):
    r"""The post-hoc merge experiment on the linear model: SGD :math:`\theta \leftarrow \theta - \lambda h (\theta -
    \xi_t)` (curvatures h = 0.5 .. 2, one batch xi_t ~ N(0, I) per step) for T = 3000 steps at lr 5e-4 (lr h T <=
    3: inside Lemma 2's window over the 400-step merge window); checkpoints at T - 400, T - 240, T (the quick job's
    grid); the merge for a linear cooldown over 400 steps (:func:`realnet.posthoc.realise`) and the side-trip from
    T - 400 on the same batches with the realised schedule (or ``side_multipliers``: another cooldown); per-example
    validation losses of the three; a fixed held-out batch's Lemma 2 window along the checkpoints (``fixed_scale``
    small: a batch near the iterates, whose gradient turns as they move). Returns (loss_last, loss_merge,
    loss_side, window)."""
    from realnet.posthoc import realise

    from . import premises

    rng = np.random.default_rng(seed)
    T, W = 3000, 400
    H = np.linspace(0.5, 2.0, d)
    xi = rng.normal(size=(T, d))
    theta = np.zeros((T + 1, d))
    for t in range(T):
        theta[t + 1] = theta[t] - lr * H * (theta[t] - xi[t])
    grid = [T - 400, T - 240, T]
    real = realise(f"cooldown:linear:{W}", T, grid)
    merge = real.weights @ theta[grid]
    mult = real.schedule(1.0) if side_multipliers is None else np.asarray(side_multipliers)
    side = theta[T - W].copy()
    for i in range(W):
        side -= lr * mult[i] * H * (side - xi[T - W + i])
    xv = 0.1 * rng.normal(size=(n_val, d))

    def losses(th):
        return 0.5 * ((th[None, :] - xv) ** 2 * H).sum(axis=1)

    xf = fixed_scale * rng.normal(size=d)
    g = np.array([H * (theta[s] - xf) for s in grid])
    n = np.linalg.norm(g, axis=1)
    window = premises.lemma2_window(np.array(grid) - grid[0], g @ g[0] / (n * n[0]), n / n[0])
    return losses(theta[T]), losses(merge), losses(side), window


def _posthoc_control(positive: bool, sizes: ControlSizes, seed: int, out: Path, fixed_scale: float = 1.0,
                     lr: float = 5e-4) -> Verdict:
    """The claim's decision (:func:`.posthoc_merge.judge`, which its ``evaluate`` applies to the real run's
    measurements) on :func:`posthoc_quadratic`; negative: the side-trip runs no cooldown (lr x 2 over the window)
    instead of the linear cooldown the merge stands for. ``fixed_scale`` 0.01 and ``lr`` 5e-3: the premise built to
    fail."""
    from . import posthoc_merge as pm

    ll, lm, ls, window = posthoc_quadratic(seed, None if positive else np.full(400, 2.0), fixed_scale=fixed_scale,
                                           lr=lr)
    return pm.judge(ll, lm, ls, window=window, window_needed=400, lr_ratio=1.0)


#: claim id -> (description of the positive control, of the negative one, evaluate(positive, sizes, seed, out))
CONTROLS = {
    "fig2-single-step": (
        "the paper's linear model (rank-one per-example losses, E[a a^T] = I, noise scale ~1000), training batch 32, "
        "independent held-out batches: one step fits the batch",
        "low-dimensional model (2 parameters, batch 32): the batch's step is nearly the population's step, held-out "
        "batches drop as much",
        _fig2_control),
    "eq13-real-sqrt-lr": (
        "linear model, batch-gradient noise independent of the lr: stationary radius ~ sqrt(lr) (Lemma 1)",
        "wrong noise scaling: noise ~ lr^(-1/2), the radius does not depend on the lr",
        _eq13_control),
    "fig13-batch-size": (
        "the paper's linear model at a point with noise scale ~1000, independent batches of 16 .. 1024: one step "
        "fits the batch, not the others, less so as the batch nears the noise scale",
        "correlated batches: 90 % of each held-out batch's examples are the training batch's, so the held-out "
        "batches drop as much as the training batch",
        _fig13_control),
    "fig3-same-basin": (
        "the paper's linear model (rank-one per-example losses, batch 128) plus a double well in one coordinate "
        "shared by every example; both checkpoints in the same well: fixed-batch descents stay in one basin",
        "the same loss with the checkpoints in opposite wells: the interpolation crosses a barrier of half the loss",
        _fig3_control),
    "fig5-averaging-equals-schedule": (
        "the linear model (diagonal quadratic, lr h K = 0.2 .. 0.4, stationary start): each average equals its "
        "equivalent-schedule side-trip on the same batches (Lemma 2)",
        "a curved valley (rings w/4 (|x|^2 - 1)^2, angular steps of 0.2 rad): averages of points along the ring "
        "fall inside it, where no schedule goes",
        _fig5_control),
    "fig6-two-point-half-lr": (
        "the linear model, lr h K <= 0.3 (Lemma 2's regime): the two-point average at lr is the lr/2 trajectory",
        "a drifting minimum (lr h = 0.05 .. 0.1): the lr/2 trajectory lags twice as far behind it as the lr one, "
        "the two-point average half the drift",
        _fig6_control),
    "fig7-gradient-alignment": (
        "the stationary linear model: the batch noise dominates the gradient, a fixed batch's gradient stays in "
        "its cone while different batches are nearly orthogonal",
        "a minimum circling in a plane (half a turn over the side-trip), its pull 5x the batch noise: the fixed "
        "batch's gradient turns with it, different batches share it",
        _fig7_control),
    "fig8-distance-saturates": (
        "the linear model from 20 stationary radii away: the distance to an independent end point falls, then "
        "levels off at the noise ball",
        "a minimum drifting at constant speed: the distance keeps falling to the end",
        _fig8_control),
    "linear-model-fit": (
        "the linear-fit side-trip's computation (Lanczos, noise, continuation, measurement) on a torch module whose "
        "loss is the linear model (known Hessian and noise covariance), independent batches",
        "correlated batches: the continuation's batch noise is AR(1) in time (rho = 0.97, the same marginal law), "
        "so the trajectory's variances and averaging ratios are not the model's",
        _linear_fit_control),
    "posthoc-merge-equals-cooldown": (
        "the linear model, lr h T <= 3: the merge of checkpoints equals the side-trip with the realised cooldown "
        "(the claim's decision, posthoc_merge.judge)",
        "a wrong cooldown: the side-trip keeps training at lr x 2 over the window instead of the cooldown the merge "
        "stands for",
        _posthoc_control),
}

#: claim id -> (description, evaluate(sizes, seed, out)): a premise of the claim built to fail (NOT DECIDED)
PREMISE_CONTROLS = {
    "fig6-two-point-half-lr": (
        "the branch point far outside the noise ball (lr h = 0.05 .. 0.1): the fixed held-out batch's gradient "
        "shrinks by more than 5 % before the first loss evaluation, Lemma 2's window closes",
        lambda sizes, seed, out: _fig6_control(False, sizes, seed, out, far_start=True)),
    "posthoc-merge-equals-cooldown": (
        "lr x 10 (lr h x 400 = 1 .. 4) and a fixed held-out batch near the iterates: its gradient turns as they "
        "move, the merge window is outside Lemma 2's window",
        lambda sizes, seed, out: _posthoc_control(True, sizes, seed, out, fixed_scale=0.01, lr=5e-3)),
}


def run_controls(out, sizes: ControlSizes | None = None, only=None) -> list[ControlRecord]:
    """Run every control (``only``: claim ids) into ``out`` (figures of each control's first replicate under
    ``out/<claim>/<control>-<seed>/``) and
    write ``out/controls.json`` and ``out/controls.md``; returns the records. Controls already in
    ``out/controls.json`` with the same sizes are read back, not rerun."""
    sizes = sizes or ControlSizes()
    if sizes.replicates < 3:
        raise ValueError(f"replicates must be an integer >= 3, got {sizes.replicates}")
    out = Path(out)
    saved = read_controls(out, sizes)
    if saved is not None and only is None:
        return saved
    records = []
    for cid, (pos_text, neg_text, evaluate) in CONTROLS.items():
        if only and cid not in only:
            continue
        for positive, text in ((True, pos_text), (False, neg_text)):
            kind = "positive" if positive else "negative"
            records.append(_replicated(cid, kind, PASS if positive else FAIL, text, sizes, out,
                                       lambda seed, o: evaluate(positive, sizes, seed, o)))
    write_json(out / "controls.json", dict(sizes=asdict(sizes), environment=environment(),
                                           controls=[r.to_dict() for r in records]), nonfinite="string")
    atomic_write_text(out / "controls.md", "\n".join(controls_table(records)) + "\n")
    return records


def _replicated(cid: str, kind: str, expected: str, text: str, sizes: ControlSizes, out: Path,
                evaluate) -> ControlRecord:
    """One control from ``sizes.replicates`` independent seeds: the state of
    :func:`.replication.combine` over the replicate verdicts (the claim's ``scale``)."""
    from .replication import Replicate, combine

    reps, verdicts, reps_info = [], [], []
    for r in range(sizes.replicates):
        seed = sizes.seed * 1000 + r
        with contextlib.nullcontext() if r == 0 else plots.disabled():  # figures of the first replicate only
            v = evaluate(seed, out / cid / f"{kind}-{seed}")
        reps.append(Replicate(index=r, step=0, step2=0, seed=seed))
        verdicts.append(v)
        reps_info.append(dict(seed=seed, state=v.state, value=v.value,
                              unmet_premises=[p["name"] for p in v.unmet_premises()],
                              failing_checks=[k for k, c in v.checks.items() if not c["passed"]]))
    v = combine(reps, verdicts, scale=_claim(cid).scale)
    iv = v.details["interval"]
    return ControlRecord(claim=cid, control=kind, state=v.state, expected_state=expected, replicates=reps_info,
                         description=text, value=v.value, interval=[iv["low"], iv["high"]],
                         unmet_premises=[p["name"] for p in v.unmet_premises()])


def run_premise_controls(out, sizes: ControlSizes | None = None) -> list[ControlRecord]:
    """The premises built to fail (:data:`PREMISE_CONTROLS`): each record's expected state is NOT DECIDED."""
    sizes = sizes or ControlSizes()
    return [_replicated(cid, "premise", NOT_DECIDED, text, sizes, Path(out),
                        lambda seed, o, f=evaluate: f(sizes, seed, o))
            for cid, (text, evaluate) in PREMISE_CONTROLS.items()]


def read_controls(out, sizes: ControlSizes | None = None) -> list[ControlRecord] | None:
    """The records of ``out/controls.json`` (None: none there, unreadable, or of other ``sizes``)."""
    try:
        d = read_json(Path(out) / "controls.json")
        if sizes is not None and d["sizes"] != asdict(sizes):
            return None
        return [ControlRecord(**{k: v for k, v in r.items() if k != "as_expected"}) for r in d["controls"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def controls_table(records) -> list[str]:
    """Markdown lines: one row per control (records or their dicts)."""
    rows = [r if isinstance(r, dict) else r.to_dict() for r in records]
    lines = ["| claim | control | state | expected | value [95 % interval] | replicates (value: state) | "
             "what makes it so |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        reps = "; ".join(f"{_fmt(x['value'])}: {x['state']}" for x in r["replicates"])
        iv = r.get("interval") or []
        value = _fmt(r.get("value")) + (f" [{_fmt(iv[0])}, {_fmt(iv[1])}]" if len(iv) == 2 else "")
        mark = "" if r["state"] == r["expected_state"] else " **(not as expected)**"
        lines.append(f"| `{r['claim']}` | {r['control']} | {r['state']}{mark} | {r['expected_state']} | {value} | "
                     f"{reps} | {r['description']} |")
    return lines


def _claim(cid: str):
    """The claim as the real job runs it on one replicate (:data:`.claims.REPLICATE_CLAIMS`; the controls combine
    their own replicates)."""
    from .claims import REPLICATE_CLAIMS

    return REPLICATE_CLAIMS[cid]


def _fmt(x) -> str:
    try:
        return f"{float(x):.3g}"
    except (TypeError, ValueError):
        return str(x)
