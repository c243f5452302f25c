r"""``python -m realnet posthoc``: merge a run's checkpoints for many kernels / cooldowns after the fact and evaluate.

Python: ``realnet.posthoc_run.evaluate_merges(run_dir, at_step, out_dir, options=None, **overrides)`` ->
:class:`MergeResult`.
CLI: ``python -m realnet posthoc --run DIR --at-step T --out OUT [--kernels SPEC,SPEC,...] [--predict] [--key=value
...]``.

For every candidate kernel (:func:`realnet.posthoc.parse_candidate`: quadsgd specs and ``cooldown:SHAPE:L``; default
:func:`default_candidates`: the last iterate, two-point at 1, 2, 4 checkpoint spacings, n-point / LAWA, SWA windows,
EMA half-lives of 1 and 2 spacings, linear and 1-sqrt cooldowns over 2 and 4 spacings) it

1. realises the kernel at ``T`` on the run's checkpoint grid (:func:`realnet.posthoc.realise`: weights, residual,
   the realised equivalent schedule); a candidate given in ``--kernels`` whose residual exceeds ``max_residual`` is
   refused before anything is written (defaults that do not fit the grid are left out);
2. merges the checkpoints (:func:`realnet.posthoc.average_checkpoints`: streaming, float64);
3. re-estimates BatchNorm statistics (``torch.optim.swa_utils.update_bn`` on ``bn_batches`` fixed training batches,
   the side-trips' seed) and evaluates in eval mode on up to ``val_samples`` validation examples and on
   ``fresh_batches`` fresh training batches (the batches of updates T, T+1, ...: seen by no checkpoint);
4. with ``predict``: the linear model fitted at T (the ``linear-fit`` side-trip: read from ``linear_fit`` if given,
   else run into ``OUT/linear-fit``) predicts the realised kernel's variance ratio and loss reduction in the top-k
   Hessian directions (:func:`quadsgd.fitting.predict`), shown beside the measured gain.

Standard errors: over validation examples (per-example losses), the gain over the last iterate from the paired
per-example differences (same examples). The merge stands for its realised schedule (Lemma 2), shown as a
summary in the table and in full in the figure.

Outputs: ``candidates.csv`` (one row per kernel: ``kernel``, ``kernel_repr``, ``weights`` (``step:weight;...``),
``residual``, ``window``, ``effective_length``, ``schedule`` (realised multipliers, runs in time order),
``val_loss``, ``val_loss_se``, ``val_acc``, ``val_acc_se``, ``fresh_loss``, ``fresh_loss_se``, ``gain``,
``gain_se`` (val loss of the last iterate minus the candidate's, paired), and with ``predict``
``predicted_variance_ratio``, ``predicted_loss_gain``), ``summary.json`` (the same rows, the grid, the best
candidate), ``posthoc.png`` (gain against effective averaging length; the realised schedules), ``config.json``,
``run_info.json``, the output marker (kind ``posthoc``) and with ``save_models`` every merge as a realnet
checkpoint ``models/<kernel>.pt`` (:func:`realnet.posthoc.save_merged_checkpoint`). Killed or interrupted, a re-run of
the same command
keeps the finished candidates (``.resume-state.pt``, saved after each) and computes only the rest.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from sgdtraj.files import atomic_output, read_json, write_csv, write_json
from sgdtraj.outputs import claim_output, register_kind
from sgdtraj.provenance import provenance

from .checkpoint import checkpoint_path, list_checkpoints
from .config import ConfigError, check_int
from .posthoc import (
    GridRealisation,
    average_checkpoints,
    check_compatible,
    parse_candidate,
    realise,
    save_merged_checkpoint,
)
from .sidetrips import ResumeState, RunContext, SideTripOptions
from .trainer import build_model, deterministic_mode, load_config

__all__ = ["MergeOptions", "MergeResult", "evaluate_merges", "default_candidates", "COLUMNS", "draw_posthoc"]

#: the output-directory kind of a post-hoc merge (``realnet posthoc --out``)
POSTHOC_KIND = register_kind("posthoc", "a realnet post-hoc merge")

#: candidates.csv columns, in order
COLUMNS = ["kernel", "kernel_repr", "weights", "residual", "window", "effective_length", "schedule", "val_loss",
           "val_loss_se", "val_acc", "val_acc_se", "fresh_loss", "fresh_loss_se", "gain", "gain_se",
           "predicted_variance_ratio", "predicted_loss_gain"]
#: option keys that do not change the result (left out of the output's identity)
_RUNTIME = frozenset({"progress", "threads", "data_dir", "save_every_s", "linear_fit"})


@dataclass
class MergeOptions(SideTripOptions):
    kernels: list[str] = field(default_factory=list)  # candidate specs (empty = default_candidates for the grid)
    max_residual: float = 0.25  # refuse a --kernels candidate whose grid residual exceeds this
    bn_batches: int = 10  # fixed training batches for update_bn
    bn_batch_size: int = 0  # their size (0 = the run's batch size)
    val_samples: int = 10000  # validation examples evaluated
    fresh_batches: int = 10  # fresh training batches (updates T, T+1, ...) evaluated
    predict: bool = False  # predict each candidate's gain from the linear model fitted at T
    linear_fit: str | None = None  # a finished linear-fit side-trip of this run at T (None: run it into OUT/linear-fit)
    save_models: bool = False  # write each merge as a realnet checkpoint OUT/models/<kernel>.pt

    def validate(self, step: int) -> None:
        check_int("bn_batches", self.bn_batches, 1)
        check_int("val_samples", self.val_samples, 1)
        check_int("fresh_batches", self.fresh_batches, 1)
        if not (self.max_residual >= 0 and math.isfinite(self.max_residual)):
            raise ConfigError(f"max_residual must be a finite number >= 0; got {self.max_residual!r}")
        if len(set(self.kernels)) != len(self.kernels):
            raise ConfigError(f"kernels must be distinct; got {self.kernels}")


@dataclass(eq=False)
class MergeResult:
    """What :func:`evaluate_merges` computed: ``rows`` (one dict per candidate, keys :data:`COLUMNS`) and the
    realisations (``realisations[kernel]``: :class:`realnet.posthoc.GridRealisation`)."""

    run: str
    at_step: int
    lr: float
    checkpoints: list[int]
    rows: list[dict[str, Any]]
    realisations: dict[str, GridRealisation]
    wall_s: float = 0.0

    def row(self, kernel: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["kernel"] == kernel)

    def headline(self) -> dict[str, Any]:
        best = max(self.rows, key=lambda r: r["gain"] if math.isfinite(r["gain"]) else -math.inf)
        return {"at_step": self.at_step, "candidates": len(self.rows), "best": best["kernel"],
                "best_gain": best["gain"], "best_gain_se": best["gain_se"],
                "last_val_loss": self.row("last")["val_loss"]}


# ============================================================================================ candidates
def _ema_for_half_life(h: int) -> str:
    a = 1.0 - 0.5 ** (1.0 / h)
    return f"ema:{float(f'{a:.4g}')!r}"


def default_candidates(at_step: int, steps) -> list[str]:
    """The default candidate specs for a grid: built from the spacing D between T and the checkpoint before it and
    the checkpoints that exist (module docstring); ``last`` first."""
    lags = sorted({int(at_step) - int(s) for s in steps if int(s) < int(at_step)})
    if not lags:
        return ["last"]
    D, have = lags[0], set(lags)
    out = ["last"] + [f"twopoint:{m * D}" for m in (1, 2, 4) if m * D in have]
    out += [f"npoint:{n}:{D}" for n in (3, 5) if (n - 1) * D in have]
    out += [f"cooldown:{shape}:{m * D}" for m in (2, 4) for shape in ("linear", "1-sqrt") if m * D <= lags[-1]]
    out += [f"swa:{m * D}" for m in (4, 8) if m * D <= lags[-1]]
    out += [_ema_for_half_life(m * D) for m in (1, 2)]
    return out


def _plan(kernels: list[str], T: int, steps: list[int], max_residual: float, explicit: bool):
    """[(spec, realisation)] with 'last' first; refuses (explicit) or drops (defaults) poorly realised kernels."""
    plan: dict[str, GridRealisation] = {}
    seen: dict[str, str] = {}
    for spec in (["last"] + [k for k in kernels if k != "last"]):
        try:
            r = realise(spec, T, steps)
        except ValueError as e:
            raise ConfigError(f"--kernels: {e}") from None
        if r.residual > max_residual:
            if explicit and spec != "last":
                raise ConfigError(
                    f"--kernels {spec}: its grid residual {r.residual:.3g} exceeds --max-residual {max_residual:g} "
                    f"(the run's checkpoints near step {T}: {', '.join(map(str, [s for s in steps if s <= T][-6:]))}); "
                    f"choose lags that are checkpoints or raise --max-residual")
            continue
        key = str(parse_candidate(spec))
        if key in seen:  # the same kernel under another name (e.g. cooldown:linear:L is swa:L)
            continue
        seen[key] = spec
        plan[spec] = r
    return plan


# ============================================================================================ evaluation
def _per_example(model, batches, rt) -> tuple[np.ndarray, np.ndarray]:
    """Per-example cross-entropy and correctness in eval mode."""
    losses, correct = [], []
    model.eval()
    with torch.no_grad():
        for x, y in batches:
            with rt.autocast():
                out = model(rt.prep(x))
            losses.append(F.cross_entropy(out.float(), y, reduction="none").double().cpu())
            correct.append((out.argmax(1) == y).double().cpu())
    return torch.cat(losses).numpy(), torch.cat(correct).numpy()


def _file_name(spec: str) -> str:
    """A kernel spec as a file name (``cooldown:1-sqrt:400`` -> ``cooldown_1-sqrt_400``)."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in spec)


def _se(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def _predictions(fit, realisations: dict[str, GridRealisation]) -> dict[str, tuple[float, float]]:
    """(variance ratio, loss gain) of each realised kernel in the fitted model's top-k directions."""
    from quadsgd.fitting import predict

    kernels = {s: r.realised_kernel() for s, r in realisations.items()}
    out = {s: (1.0, 0.0) for s, k in kernels.items() if k.is_last}  # the last iterate: nothing to predict
    specs = [s for s in kernels if s not in out]
    if not specs:
        return out
    p = predict(fit.kappa, fit.noise_std, fit.lr, fit.momentum, kernels=[kernels[s] for s in specs])
    ok = np.asarray(p.stable, bool)
    var = np.nansum(p.variance[ok])
    for j, s in enumerate(specs):
        ratio = float(np.nansum(p.averaged_variance[ok, j]) / var) if var > 0 else math.nan
        out[s] = (ratio, float(np.nansum(p.loss_reduction[ok, j])))
    return out


def _linear_fit(run: Path, T: int, out: Path, opts: MergeOptions):
    from .sidetrips.linear_fit import LinearFitResult, fit_linear_model

    if opts.linear_fit:
        d = Path(opts.linear_fit)
        if not (d / "summary.json").is_file():
            raise ConfigError(f"--linear-fit {str(d)!r} is no finished linear-fit side-trip (no summary.json)")
        res = LinearFitResult.load(d)
        if int(res.step) != T:
            raise ConfigError(f"--linear-fit {str(d)!r} was fitted at step {res.step}, not at --at-step {T}")
        return res
    return fit_linear_model(run, T, out / "linear-fit", device=opts.device, threads=opts.threads,
                            progress=opts.progress)


def evaluate_merges(run_dir, at_step: int, out_dir, options: MergeOptions | None = None, **overrides) -> MergeResult:
    """Every candidate merge of the run's checkpoints at ``at_step``, evaluated (module docstring). ConfigError /
    ValueError naming the option for bad input (``--at-step`` without a checkpoint, an unknown kernel spec, a
    grid too coarse for a kernel beyond ``--max-residual``, checkpoints to merge of different architectures or
    corrupt), before anything is written."""
    from .sidetrips import prepare_out, resolve_options

    opts = resolve_options(MergeOptions, options, overrides)
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"--run directory not found: {str(run)!r}")
    load_config(run)
    T = check_int("at_step", at_step, 0)
    opts.validate(T)
    steps = list_checkpoints(run)
    if T not in steps:
        raise ConfigError(f"--at-step {T} has no checkpoint in run {str(run)!r}; checkpointed steps: "
                          f"{', '.join(map(str, steps)) or 'none'}")
    explicit = bool(opts.kernels)
    specs = list(opts.kernels) if explicit else default_candidates(T, steps)
    for s in specs:
        try:
            parse_candidate(s)
        except ValueError as e:
            raise ConfigError(f"--kernels: {e}") from None
    plan = _plan(specs, T, steps, opts.max_residual, explicit)
    merged = sorted({int(s) for r in plan.values() for s in r.steps[r.weights != 0]} - {T})
    try:
        check_compatible([checkpoint_path(run, s) for s in [T, *merged]])
    except ValueError as e:
        raise ConfigError(f"--run: {e}") from None
    prepare_out(run, out_dir)
    ident = {"posthoc": str(run.resolve()), "at_step": T,
             "options": {k: v for k, v in dataclasses.asdict(opts).items() if k not in _RUNTIME}}
    claim = claim_output(out_dir, POSTHOC_KIND, ident, holder="realnet posthoc")
    out = claim.path
    try:
        if claim.resumed and (out / "summary.json").is_file():  # the same job, finished: read it back
            saved = read_json(out / "summary.json")
            return MergeResult(run=saved["run"], at_step=T, lr=saved["lr"], checkpoints=saved["checkpoints"],
                               rows=saved["candidates"], realisations=plan, wall_s=saved["wall_s"])
        result = _evaluate_claimed(run, T, out, opts, plan, steps, claim)
    except BaseException:
        claim.abandon()
        raise
    finally:
        claim.release()
    return result


def _evaluate_claimed(run: Path, T: int, out: Path, opts: MergeOptions, plan, steps, claim) -> MergeResult:
    state = ResumeState(out, 0.0, on_save=claim.keep)
    with deterministic_mode(False, opts.threads):
        ctx = RunContext(run, opts, state=state)
        det = ctx.rt.device.type == "cpu" if opts.deterministic is None else opts.deterministic
        with deterministic_mode(det):
            t0 = time.perf_counter()
            config = {"command": "posthoc", "run": str(run.resolve()), "at_step": T,
                      "options": dataclasses.asdict(opts),
                      "candidates": list(plan), "run_config": dataclasses.asdict(ctx.cfg)}
            if not (out / "config.json").is_file():
                write_json(out / "config.json", config)
            info = provenance(seed=ctx.cfg.seed, config=config, device=str(ctx.rt.device))
            if (out / "run_info.json").is_file():
                first = read_json(out / "run_info.json")
                first.setdefault("resumed", []).append(info)
                info = first
            write_json(out / "run_info.json", info)
            saved = state.load() or {"rows": {}, "val": {}, "fresh": {}}
            rows, val, fresh = saved["rows"], saved["val"], saved["fresh"]
            model = build_model(ctx.cfg, ctx.data.num_classes).to(ctx.rt.device)
            bn = ctx.bn_batches(opts.bn_batches, opts.bn_batch_size)
            bar = ctx.bar(len(plan), f"posthoc merges at step {T}", initial=sum(s in rows for s in plan))
            for spec, r in plan.items():
                if spec in rows:
                    continue
                use = r.weights != 0
                paths = [checkpoint_path(run, int(s)) for s in r.steps[use]]
                sd = average_checkpoints(paths, r.weights[use])
                if opts.save_models:
                    save_merged_checkpoint(out / "models" / f"{_file_name(spec)}.pt", sd, checkpoint_path(run, T),
                                           {"kernel": spec, "steps": [int(s) for s in r.steps[use]],
                                            "weights": [float(w) for w in r.weights[use]], "residual": r.residual})
                model.load_state_dict(sd)
                del sd
                update_bn(bn, model)
                vl, vc = _per_example(model, ctx.data.eval_batches("val", opts.val_samples, opts.eval_batch_size,
                                                                  ctx.rt.device), ctx.rt)
                fl, _ = _per_example(model, ((ctx.rt.prep(x), y) for x, y in ctx.batches(T, T + opts.fresh_batches)),
                                     ctx.rt)
                val[spec], fresh[spec] = torch.from_numpy(vl), torch.from_numpy(fl)
                rows[spec] = {"val_acc": float(vc.mean()), "val_acc_se": _se(vc)}
                state.save(lambda: {"rows": rows, "val": val, "fresh": fresh}, force=True)
                bar.update(1)
            bar.close()
            preds = _predictions(_linear_fit(run, T, out, opts), plan) if opts.predict else {}
            wall = time.perf_counter() - t0 + state.elapsed_before()
    last = val["last"].numpy()
    table = []
    for spec, r in plan.items():
        v, f = val[spec].numpy(), fresh[spec].numpy()
        d = last - v
        use = r.weights != 0
        table.append({
            "kernel": spec, "kernel_repr": repr(parse_candidate(spec)),
            "weights": ";".join(f"{int(s)}:{w:.6g}" for s, w in zip(r.steps[use], r.weights[use])),
            "residual": r.residual, "window": r.window, "effective_length": r.effective_length,
            "schedule": r.schedule_summary(), "val_loss": float(v.mean()), "val_loss_se": _se(v),
            "val_acc": rows[spec]["val_acc"], "val_acc_se": rows[spec]["val_acc_se"],
            "fresh_loss": float(f.mean()), "fresh_loss_se": _se(f), "gain": float(d.mean()),
            "gain_se": _se(d) if spec != "last" else 0.0,
            "predicted_variance_ratio": preds.get(spec, (math.nan, math.nan))[0],
            "predicted_loss_gain": preds.get(spec, (math.nan, math.nan))[1]})
    result = MergeResult(run=str(run), at_step=T, lr=float(_lr(ctx, T)), checkpoints=[int(s) for s in steps],
                         rows=table, realisations=plan, wall_s=wall)
    write_csv(out / "candidates.csv", COLUMNS, table)
    write_json(out / "summary.json", {"run": result.run, "at_step": T, "lr": result.lr,
                                      "checkpoints": result.checkpoints,
                                      "predict": bool(opts.predict), "headline": result.headline(), "candidates": table,
                                      "wall_s": wall})
    _figure(result, out / "posthoc.png")
    state.clear()
    return result


def _lr(ctx: RunContext, T: int) -> float:
    from .trainer import lr_at

    return lr_at(ctx.cfg, max(T - 1, 0))


# ============================================================================================ figure
def _colour(i: int):
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def draw_posthoc(axes, result: MergeResult) -> None:
    """(a) gain over the last iterate (+-2 SE) against the effective averaging length, predicted gains as open
    markers; (b) the realised schedules (lr multiplier against steps before T)."""
    ax, ax2 = axes
    for i, r in enumerate(result.rows):
        if r["kernel"] == "last":
            continue
        c = _colour(i)
        ax.errorbar(r["effective_length"], r["gain"], yerr=2 * r["gain_se"], fmt="o", color=c, label=r["kernel"])
        if math.isfinite(r["predicted_loss_gain"]):
            ax.plot(r["effective_length"], r["predicted_loss_gain"], "o", mfc="none", color=c)
        real = result.realisations[r["kernel"]]
        L = max(real.window, 1)
        ax2.step(np.arange(1, L + 1), real.realised[:L], where="post", color=c, label=r["kernel"])
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("effective averaging length (steps)")
    ax.set_ylabel("val loss(last) - val loss(merge)")
    ax.set_title("gain of each merge (filled: measured +-2 SE; open: predicted)")
    ax2.set_xlabel("steps before T")
    ax2.set_ylabel("lr multiplier the merge stands for")
    ax2.invert_xaxis()
    ax2.set_title("realised equivalent schedules")
    ax2.legend(fontsize=6, ncol=2)


def _figure(result: MergeResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    draw_posthoc(axes, result)
    fig.suptitle(f"post-hoc merges of {Path(result.run).name} at step {result.at_step}")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
