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

``python -m validation controls --out DIR`` writes ``DIR/controls.json`` (``{"sizes", "environment", "controls":
[records]}``: sizes and seed, package versions and git hash, the
records :class:`ControlRecord`) and ``DIR/controls.md`` (a table); ``reproduce`` runs the controls into
``OUT/controls`` with its real-network claims and includes the table in its report.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sgdtraj.files import atomic_write_text, read_json, write_json
from sgdtraj.outputs import register_kind
from sgdtraj.provenance import environment

from ..verdict import FAIL, NOT_DECIDED, PASS, Verdict
from .config import RealConfig
from .context import Branch

__all__ = ["CONTROLS_KIND", "ControlContext", "ControlRecord", "ControlSizes", "CONTROLS", "run_controls",
           "controls_table",
           "linear_pairs", "linear_sweep", "sweep_gradients", "read_controls"]

#: the output-directory kind of ``validation controls --out``
CONTROLS_KIND = register_kind("controls", "a validation controls directory")


@dataclass(frozen=True)
class ControlSizes:
    """Sizes of the controls: ``replicates`` independent seeds per control (>= 3), and the linear model's
    dimension, steps and recording interval."""

    replicates: int = 3
    dim: int = 2000  # high-dimensional like a network's weights: a pair's distance concentrates (relative sd 1.6 %)
    steps: int = 4000
    record_every: int = 100
    seed: int = 0

    @classmethod
    def tiny(cls) -> "ControlSizes":
        return cls(replicates=3, dim=1000, steps=2000, record_every=100)


@dataclass
class ControlRecord:
    """One control of one claim: ``control`` "positive" | "negative", its ``state`` (the replicates' common state;
    NOT DECIDED when they disagree), ``expected_state`` (PASS | FAIL), ``replicates`` ([{seed, state, value}]),
    ``description`` (what makes the claim true or false here)."""

    claim: str
    control: str
    state: str
    expected_state: str
    replicates: list = field(default_factory=list)
    description: str = ""

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


def _sweep_point(sizes: ControlSizes, rng) -> np.ndarray:
    """delta with |delta| = 1 in ``sizes.dim // 2`` dimensions: noise scale ~ d (1 + 0.01) ~ 1000 at the default."""
    d = max(100, sizes.dim // 2)
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
    delta = _sweep_point(sizes, rng)
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
}


def run_controls(out, sizes: ControlSizes | None = None, only=None) -> list[ControlRecord]:
    """Run every control (``only``: claim ids) into ``out`` (figures under ``out/<claim>/<control>-<seed>/``) and
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
            reps = []
            for r in range(sizes.replicates):
                seed = sizes.seed * 1000 + r
                v = evaluate(positive, sizes, seed, out / cid / f"{kind}-{seed}")
                reps.append(dict(seed=seed, state=v.state, value=v.value,
                                 unmet_premises=[p["name"] for p in v.unmet_premises()],
                                 failing_checks=[k for k, c in v.checks.items() if not c["passed"]]))
            states = {x["state"] for x in reps}
            records.append(ControlRecord(claim=cid, control=kind, state=states.pop() if len(states) == 1 else
                                         NOT_DECIDED, expected_state=PASS if positive else FAIL, replicates=reps,
                                         description=text))
    write_json(out / "controls.json", dict(sizes=asdict(sizes), environment=environment(),
                                           controls=[r.to_dict() for r in records]), nonfinite="string")
    atomic_write_text(out / "controls.md", "\n".join(controls_table(records)) + "\n")
    return records


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
    lines = ["| claim | control | state | expected | replicates (value: state) | what makes it so |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        reps = "; ".join(f"{_fmt(x['value'])}: {x['state']}" for x in r["replicates"])
        mark = "" if r["state"] == r["expected_state"] else " **(not as expected)**"
        lines.append(f"| `{r['claim']}` | {r['control']} | {r['state']}{mark} | {r['expected_state']} | {reps} | "
                     f"{r['description']} |")
    return lines


def _fmt(x) -> str:
    try:
        return f"{float(x):.3g}"
    except (TypeError, ValueError):
        return str(x)
