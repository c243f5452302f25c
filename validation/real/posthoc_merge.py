r"""Verdict ``posthoc-merge-equals-cooldown``: merging stored checkpoints after training stands for a cooldown.

Claim (Lemma 2, Table 1, generalised: "If gradient of the loss with respect to a fixed batch is approximately
constant, then for SWA ..., two-point averaging and EMA, the equivalent learning schedule is described in
Table 1"; the paper's Appendix A.5 proof holds for any kernel): the merge :math:`\sum_j w_j\theta_{s_j}` of a
constant-lr run's checkpoints equals the end point of a side-trip from the oldest merged checkpoint that follows
the same batches with the merge's equivalent schedule (step r before T at lr times :math:`\sum_{k<r} w_k`).

Experiment (:func:`measure`; the rule and the premises are the constants below, fixed before any real run):

* The window [S0, T]: a replicate's block of steps (its branch point to the next one's, :func:`merge_window`) at
  the run's checkpoints in it; without replicates T = the run's last checkpoint and S0 the checkpoint nearest
  :math:`(1 - W_{FRAC})T`.
* The requested cooldown: linear decay to 0 over the window (:data:`SHAPE`; ``cooldown:linear:(T - S0)``),
  realised on the checkpoints in [S0, T] by :func:`realnet.posthoc.realise` (least squares when the grid is
  coarse); the merge is :func:`realnet.posthoc.average_checkpoints` of those checkpoints.
* The side-trip: from S0 (parameters and momentum of the checkpoint), the run's batches of updates S0..T-1 at the
  run's lr times the *realised* schedule (the schedule the merge stands for exactly, under Lemma 2); a second
  side-trip with the *requested* linear schedule is reported beside it (``details``; replicate 0 only), not judged.
* Each model (last iterate theta_T, merge, side-trip end) gets ``update_bn`` on the same fixed training batches and
  is evaluated in eval mode on the same validation examples (per-example cross-entropy).

Statistic: :math:`G = |\bar d_{ms}| / |\bar d_{ls}|`, with :math:`d_{ms,i} = \ell_i(\mathrm{merge}) -
\ell_i(\mathrm{side})`, :math:`d_{ls,i} = \ell_i(\theta_T) - \ell_i(\mathrm{side})`: the disagreement between the
merge and the cooldown as a fraction of what the cooldown changes. Lemma 2 predicts G = 0. Rule: PASS iff
:math:`G <` :data:`GAP_MAX` (as ``fig5-averaging-equals-schedule``). Uncertainty: delta method on the paired
per-example differences (n - 1 degrees of freedom; the comparison is paired by construction -- same checkpoint,
same batches, same validation examples -- so batch-order (seed) variation does not enter the difference; it is not
measured here).

Premises (``premises``: {name, value, rule, met}; a premise not met makes the verdict NOT DECIDED; the regime
premises of every real-network claim, :mod:`validation.real.premises` (a) plateau and (b) not memorised, come first):

* ``lemma2-window``: the merge window lies inside Lemma 2's validity window as the paper states it ("the gradient
  norm changed less than 5%, while cos stayed generally above 0.5"): along the run's checkpoints in [S0, T] a fixed
  held-out batch keeps its gradient within cos >= :data:`validation.real.premises.LEMMA2_COS_MIN` of the one at S0
  and its norm within :data:`validation.real.premises.LEMMA2_NORM_TOL` (the rule of the other Lemma 2 premises),
  over all T - S0 steps;
* ``constant-lr``: the run's lr is constant over the window (max / min = 1; the merge stands for a cooldown
  *of a constant-lr trajectory*);
* ``gain-resolved``: the cooldown changes the validation loss measurably, :math:`|\bar d_{ls}| / \mathrm{se} \ge`
  :data:`GAIN_Z_MIN` (else G is a ratio of noise).

:func:`judge` turns the per-example losses and the premise values into the verdict; the tests run it on a
quadratic model where Lemma 2 holds (PASS), a wrong cooldown (FAIL) and a large lr (premise not met: NOT DECIDED).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import plots
from ..verdict import Verdict
from . import premises
from .context import RealClaim, RealContext

__all__ = ["CLAIM_ID", "SHAPE", "W_FRAC", "GAP_MAX", "GAIN_Z_MIN", "judge", "gap_statistic", "measure", "claim",
           "draw"]

CLAIM_ID = "posthoc-merge-equals-cooldown"
# ---------------------------------------------------------------- fixed before measuring
SHAPE = "linear"  # the requested cooldown's shape
W_FRAC = 1.0 / 6.0  # the window: the last sixth of the run (quick job: 400 of 2,400 steps, 2,000..2,400)
GAP_MAX = 0.5  # rule: |merge - side-trip| / |last - side-trip| in validation loss
GAIN_Z_MIN = 2.0  # premise: the cooldown's change of the validation loss in standard errors
LR_CONSTANT_TOL = 1e-9  # premise: max / min lr over the window - 1
HELDOUT_BATCH = 128  # the fixed held-out batch of the Lemma 2 premise
HELDOUT_SEED = 4_000_037


@dataclass(frozen=True)
class GapStatistic:
    """G = |mean d_ms| / |mean d_ls| with its delta-method standard error; the gain and its z."""

    value: float
    se: float
    merge_minus_side: float
    last_minus_side: float
    last_minus_side_se: float
    n: int

    @property
    def gain_z(self) -> float:
        return abs(self.last_minus_side) / self.last_minus_side_se if self.last_minus_side_se > 0 else math.inf


def gap_statistic(loss_last, loss_merge, loss_side) -> GapStatistic:
    """The statistic from per-example losses of the three models on the same examples (1-D arrays, equal length)."""
    ll, lm, ls = (np.asarray(x, dtype=np.float64).ravel() for x in (loss_last, loss_merge, loss_side))
    if not (ll.size == lm.size == ls.size) or ll.size < 2:
        raise ValueError("the three loss arrays must be 1-D of equal length >= 2")
    n = ll.size
    dm, dl = lm - ls, ll - ls
    a, b = float(dm.mean()), float(dl.mean())
    C = np.cov(np.vstack([dm, dl]), ddof=1) / n
    if b == 0.0:
        return GapStatistic(math.inf, math.nan, a, b, float(math.sqrt(C[1, 1])), n)
    # G = |a| / |b| = s a / b with s = sign(a b): gradient (s/b, -s a/b^2)
    s = 1.0 if a * b >= 0 else -1.0
    g = np.array([s / b, -s * a / b ** 2])
    se = float(math.sqrt(max(g @ C @ g, 0.0)))
    return GapStatistic(abs(a) / abs(b), se, a, b, float(math.sqrt(C[1, 1])), n)


def _premises(window: premises.Lemma2Window, needed: int, lr_ratio: float, st: GapStatistic) -> list:
    """The verdict's own premises (module docstring), as :class:`validation.real.premises.Premise` records."""
    C, P = premises.Condition, premises.Premise
    return [
        premises.lemma2_window_premise("lemma2-window", CLAIM_ID, {"run": window}, needed,
                                       f"a fixed held-out batch of {HELDOUT_BATCH}",
                                       "the merge window, at the run's checkpoints in it"),
        P(id="constant-lr", title="the run's lr is constant over the merge window", applies_to=CLAIM_ID,
          conditions=(C("lr_ratio", "max / min of the run's lr over the window - 1", lr_ratio - 1.0, "<=",
                        LR_CONSTANT_TOL),)),
        P(id="gain-resolved", title="the cooldown changes the validation loss measurably", applies_to=CLAIM_ID,
          conditions=(C("gain_z", "|val loss(last) - val loss(side-trip)| / its standard error (paired over "
                                  "examples)", st.gain_z, ">=", GAIN_Z_MIN),)),
    ]


def judge(loss_last, loss_merge, loss_side, *, window: premises.Lemma2Window, window_needed: int, lr_ratio: float,
          details: dict | None = None, figure: str | None = None) -> Verdict:
    """The verdict from the measurements (module docstring: statistic, rule, premises, state).

    loss_*: per-example validation losses (1-D, equal length). window: the fixed batch's
    :class:`~validation.real.premises.Lemma2Window` from S0 along the run's checkpoints; window_needed: the steps
    it must cover (T - S0). lr_ratio: max / min of the run's lr over the window.
    """
    st = gap_statistic(loss_last, loss_merge, loss_side)
    v = Verdict(
        id=CLAIM_ID, source="realnet",
        claim="A merge of a constant-lr run's stored checkpoints equals a side-trip that runs the cooldown the merge "
              "stands for (its equivalent schedule, Lemma 2 / Table 1) from the same checkpoint: same validation loss",
        statistic="|val loss(merge) - val loss(cooldown side-trip)| / |val loss(last iterate) - val loss(cooldown "
                  f"side-trip)| (paired over {st.n} validation examples; Lemma 2 predicts 0)",
        value=st.value, comparison="<", threshold=GAP_MAX, uncertainty=st.se, figure=figure,
        details=dict(details or {}, merge_minus_side=st.merge_minus_side, last_minus_side=st.last_minus_side,
                     last_minus_side_se=st.last_minus_side_se, n_examples=st.n))
    return premises.attach(v, _premises(window, int(window_needed), lr_ratio, st))


# ======================================================================================= the real measurement
def _window(steps: list[int]) -> tuple[int, int]:
    T = steps[-1]
    target = (1.0 - W_FRAC) * T
    S0 = min((s for s in steps if s < T), key=lambda s: abs(s - target))
    return S0, T


def _fixed_batch_track(ctx, run: Path, steps: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss, gradient norm and cosine of the gradient with the one at ``steps[0]`` of a fixed held-out batch
    (train-mode BN, running statistics untouched) at the checkpoints ``steps``."""
    import torch
    import torch.nn.functional as F

    from realnet.checkpoint import checkpoint_path
    from realnet.posthoc import read_state_dict
    from realnet.trainer import build_model

    x, y = ctx.heldout(1, HELDOUT_BATCH)[0]
    model = build_model(ctx.cfg, ctx.data.num_classes).to(ctx.rt.device)
    losses, norms, cosines = [], [], []
    g0 = None
    for s in steps:
        model.load_state_dict(read_state_dict(checkpoint_path(run, s)))
        saved = [b.clone() for b in model.buffers()]
        model.train()
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(ctx.rt.prep(x)).float(), y)
        loss.backward()
        g = torch.cat([p.grad.detach().double().reshape(-1) for p in model.parameters()])
        g0 = g if g0 is None else g0
        norms.append(float(g.norm()))
        cosines.append(float(g @ g0 / (g.norm() * g0.norm())))
        losses.append(float(loss.detach()))
        with torch.no_grad():
            for b, v in zip(model.buffers(), saved):
                b.copy_(v)
    return np.array(losses), np.array(norms), np.array(cosines)


def merge_window(steps: list[int], replicate=None) -> tuple[int, int]:
    """(S0, T) of the merge: a replicate's block [its branch point, its end] snapped to the run's checkpoints in it,
    or (no replicate) the checkpoint nearest the start of the run's last :data:`W_FRAC` and the last checkpoint.
    ValueError when the block holds fewer than two checkpoints."""
    if replicate is None or replicate.end < 0:
        return _window(steps)
    inside = [s for s in steps if replicate.step <= s <= replicate.end]
    if len(inside) < 2:
        raise ValueError(f"the merge window {replicate.step}..{replicate.end} holds checkpoints {inside}: "
                         "at least two are needed")
    return inside[0], inside[-1]


def measure(cfg, run: Path, out: Path, window: tuple[int, int] | None = None, seed: int = 0,
            requested: bool = True) -> dict:
    """Run the experiment on ``run`` over ``window`` = (S0, T) (None: :func:`merge_window` of the run's checkpoints;
    cached in ``OUT/posthoc-claim/result.json`` while the run, the window and the constants are unchanged); returns
    the per-example losses and the premise values. ``seed``: the side-trip seed of the fixed batches
    (:meth:`realnet.sidetrips.RunContext.seeded`). ``requested``: also run the side-trip with the requested
    (not the realised) schedule (reported, not judged)."""
    from torch.optim.swa_utils import update_bn

    from realnet.checkpoint import checkpoint_path, list_checkpoints
    from realnet.posthoc import average_checkpoints, realise
    from realnet.posthoc_run import _per_example
    from realnet.sidetrips import RunContext, SideTripOptions
    from realnet.trainer import deterministic_mode, lr_at
    from sgdtraj.files import read_json, write_json

    steps = list_checkpoints(run)
    S0, T = window if window is not None else _window(steps)
    W = T - S0
    ident = dict(run=str(Path(run).resolve()), S0=S0, T=T, shape=SHAPE, bn=cfg.bn_batches, n=cfg.eval_samples,
                 batch=HELDOUT_BATCH, seed=HELDOUT_SEED, sidetrip_seed=int(seed), requested=bool(requested))
    cache = out / "posthoc-claim" / "result.json"
    if cache.is_file():
        saved = read_json(cache)
        if saved.get("identity") == ident:
            return saved
    grid = [s for s in steps if S0 <= s <= T]
    real = realise(f"cooldown:{SHAPE}:{W}", T, grid)
    opts = SideTripOptions(device=cfg.device, threads=cfg.threads, progress=False, seed=int(seed))
    with deterministic_mode(False, opts.threads):
        ctx = RunContext(run, opts)
        with deterministic_mode(ctx.rt.device.type == "cpu"):
            bn = ctx.bn_batches(cfg.bn_batches, 0)
            lrs = np.array([lr_at(ctx.cfg, t) for t in range(S0, T)])

            def evaluate(model):
                update_bn(bn, model)
                return _per_example(model, ctx.data.eval_batches("val", cfg.eval_samples, 256, ctx.rt.device),
                                    ctx.rt)[0]

            def sidetrip(multipliers):
                br = ctx.branch(S0)
                for i, (x, y) in enumerate(ctx.batches(S0, T)):
                    br.sgd_step(x, y, float(lrs[i] * multipliers[i]))
                return evaluate(br.model)

            base = ctx.branch(T)
            loss_last = evaluate(base.model)
            use = real.weights != 0
            base.model.load_state_dict(average_checkpoints([checkpoint_path(run, int(s)) for s in real.steps[use]],
                                                           real.weights[use]))
            loss_merge = evaluate(base.model)
            loss_side = sidetrip(_padded(real.schedule(1.0), W))
            loss_requested = sidetrip(_padded(real.target[:W][::-1], W)) if requested else None
            fb_loss, fb_norm, fb_cos = _fixed_batch_track(ctx, run, grid)
    result = dict(identity=ident, S0=S0, T=T, grid=grid, lr=float(lrs.mean()), lr_ratio=float(lrs.max() / lrs.min()),
                  weights=[float(w) for w in real.weights], residual=real.residual,
                  realised=[float(m) for m in real.realised[:W]], requested=[float(m) for m in real.target[:W]],
                  loss_last=loss_last.tolist(), loss_merge=loss_merge.tolist(), loss_side=loss_side.tolist(),
                  loss_requested=None if loss_requested is None else loss_requested.tolist(),
                  fixed_batch_loss=fb_loss.tolist(),
                  fixed_batch_gradnorm=fb_norm.tolist(), fixed_batch_cos=fb_cos.tolist())
    write_json(cache, result)
    return result


def _padded(multipliers, W: int) -> np.ndarray:
    """lr multipliers of the W updates of the window in time order: a schedule shorter than the window (a kernel
    whose support starts later) keeps the full lr (multiplier 1) before it."""
    m = np.asarray(multipliers, dtype=np.float64)
    return np.concatenate([np.ones(W - m.size), m]) if m.size < W else m[-W:]


def draw(axes, m: dict) -> None:
    """(a) validation loss of the last iterate, the merge and the two side-trips (+-2 SE); (b) the schedules."""
    ax, ax2 = axes
    names = ["last iterate", "merge", "side-trip\n(realised)", "side-trip\n(requested)"]
    keys = ["loss_last", "loss_merge", "loss_side", "loss_requested"]
    if m.get("loss_requested") is None:
        names, keys = names[:3], keys[:3]
    vals = [np.asarray(m[k]) for k in keys]
    mean = [float(v.mean()) for v in vals]
    se = [float(v.std(ddof=1) / math.sqrt(v.size)) for v in vals]
    ax.errorbar(range(len(keys)), mean, yerr=[2 * s for s in se], fmt="o", capsize=4)
    ax.set_xticks(range(len(keys)), names)
    ax.set_ylabel("validation loss (+-2 SE over examples)")
    ax.set_title(f"merge of steps {m['grid'][0]}..{m['T']} vs cooldown side-trips")
    W = len(m["realised"])
    r = np.arange(1, W + 1)
    ax2.step(r, m["realised"], where="post", label="realised by the merge (side-trip runs this)")
    ax2.plot(r, m["requested"], "--", label=f"requested ({SHAPE} cooldown)")
    ax2.invert_xaxis()
    ax2.set_xlabel("steps before T")
    ax2.set_ylabel("lr multiplier")
    ax2.legend(fontsize=8)


def claim(ctx: RealContext) -> Verdict:
    """The verdict on the context's run (the embedded quick run or ``--run``)."""
    from realnet.checkpoint import list_checkpoints

    out = ctx.out
    rep = ctx.replicate
    m = measure(ctx.cfg, ctx.run_dir, out, merge_window(list_checkpoints(ctx.run_dir), rep),
                seed=rep.seed if rep is not None else 0, requested=rep is None or rep.index == 0)
    fig = f"{CLAIM_ID}.png"
    plots.save(lambda axes: draw(axes, m), out / fig,
               title="Post-hoc merge vs the cooldown it stands for (Lemma 2)", ncols=2)
    details = {k: m[k] for k in ("S0", "T", "grid", "lr", "weights", "residual")}
    details["val_loss"] = {k: float(np.mean(m[k])) for k in ("loss_last", "loss_merge", "loss_side", "loss_requested")
                           if m.get(k) is not None}
    if m.get("loss_requested") is not None:
        req = np.asarray(m["loss_requested"])
        details["requested_gap"] = float(abs(np.mean(m["loss_merge"]) - req.mean()) /
                                         abs(np.mean(m["loss_last"]) - req.mean()))
    grid = np.asarray(m["grid"])
    norm = np.asarray(m["fixed_batch_gradnorm"])
    window = premises.lemma2_window(grid - grid[0], m["fixed_batch_cos"], norm / norm[0])
    v = judge(m["loss_last"], m["loss_merge"], m["loss_side"], window=window, window_needed=int(m["T"] - m["S0"]),
              lr_ratio=m["lr_ratio"],
              details=json.loads(json.dumps(details)), figure=fig)
    return v


#: the claim; it reads no side-trip of the shared context (its cooldown side-trips run inside :func:`measure`)
POSTHOC_MERGE = RealClaim(CLAIM_ID, claim, lambda ctx: [])
