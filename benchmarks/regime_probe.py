"""Measure the regime of a realnet trajectory: plateau, memorisation, Lemma 2's premise, re-equilibration.

    python benchmarks/regime_probe.py speed [--repeats 5] [--key=value ...]
    python benchmarks/regime_probe.py train --out DIR [--key=value ...]
    python benchmarks/regime_probe.py probe DIR [--step S] [--premise-steps 150] [--eq13-steps 600]
                                          [--eq13-factors 1,0.5,0.25] [--record-every 10] [--json FILE]
    python benchmarks/regime_probe.py all --out DIR [probe options] [--key=value ...]
    python benchmarks/regime_probe.py plateau DIR --lengths 1200,1600,2400
    python benchmarks/regime_probe.py table FILE.json ...     (markdown rows of saved results)

``plateau`` evaluates (a) on prefixes of a constant-lr run (a shorter run with the same config is exactly
that prefix); ``probe --step S`` then branches from the prefix's 75% point if it is checkpointed.

``--key=value`` are :class:`realnet.config.TrainConfig` fields (e.g. ``--width=8 --augment-strength=1
--steps=2000 --lr=0.05``); ``--threads`` defaults to 1, ``--progress`` to false. ``train`` adds a
checkpoint at 75% of the run (the branch point, the paper's 75k of 100k).

What is measured (thresholds fixed before measuring: the constants of :mod:`validation.real.premises`;
the measurements (a), (b) and the summary of (c) are :mod:`realnet.regime`'s, shared with ``validation``):

* (a) plateau: mean training loss of the fresh batches (``metrics.csv``: loss of the batch of update t at
  the parameters before it) over the last quarter of the run / over the quarter before; holds if within
  10% (``|ratio - 1| <= 0.1``).
* (b) not memorised: at the branch step S, mean loss of 10 fixed held-out batches (the side-trips' seed
  1_000_003; augmented like the stream when the data set augments fixed batches) / mean loss of the 10
  fresh training batches of updates S..S+9, both with batch-statistics BatchNorm (as in training) at the
  branch parameters; holds if < 1.5. Eval-mode BN numbers and clean (unaugmented) train/validation
  losses are reported too.
* (c) Lemma 2's premise: from the branch checkpoint (model + momentum), ``--premise-steps`` SGD updates
  on the main batch order at the run's lr (and a linearly decaying lr, and lr/2: the fig7 / fig6 side-
  trips), tracking a fixed held-out batch and a fixed training-split batch (seed 424_242, as the alignment
  side-trip): loss at the end / at the start (holds if >= 0.5) and the gradient norm's largest change
  ``max_t max(r_t, 1/r_t)``, ``r_t = |g_t| / |g_0|`` (holds if < 2); also ``min_t cos(g_t, g_0)``.
* (e) re-equilibration after an lr change (Lemma 1 / eq. 13): for each factor f, two side-trips from S at
  lr*f with different batch orders (data seed and data seed + 1), ``--eq13-steps`` updates; the distance
  ``d(t)`` between them, in four measures: all weights, BN-scale-free conv filters (each output channel
  normalised), the classifier layer, and function space (rms difference of log-probabilities on a fixed
  held-out batch of 256); ``t90`` = first recorded t with d(t) >= 0.9 * mean d over the last quarter;
  ``growth`` = mean d over the last quarter / over the quarter before (saturated: within 10%). The end
  distances against lr on log-log: least-squares slope (Lemma 1 predicts 0.5 once saturated). The pair's
  mean training loss per 50 steps shows the loss re-equilibrating.

Prints a JSON object (and writes it with ``--json``). All on the CPU; one torch thread unless told.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realnet.checkpoint import find_checkpoint, list_checkpoints, load_checkpoint  # noqa: E402
from realnet.config import TrainConfig, build_options, resolve_config  # noqa: E402
from realnet.data import BatchOrder, build_data  # noqa: E402
from realnet.probes import memorisation  # noqa: E402
from realnet.regime import fixed_batch_change, training_plateau  # noqa: E402
from realnet.sidetrips.alignment import FIXED_BATCH_SEED as FIXED_SEED  # noqa: E402  (the alignment's fixed batch)
from realnet.trainer import (  # noqa: E402
    build_model,
    build_optimizer,
    deterministic_mode,
    load_config,
    lr_at,
    restore_checkpoint,
    train,
    train_step,
)
from sgdtraj.files import read_csv  # noqa: E402
from sgdtraj.provenance import provenance  # noqa: E402
from validation.real.premises import FIT_MIN, GRADNORM_FACTOR_MAX, MEMORISED_MAX, PLATEAU_TOL  # noqa: E402,F401

SAT_TOL = 0.10  # (e) saturated if last-quarter mean distance within 10% of the quarter before


# ---------------------------------------------------------------------------------------------- helpers


def _cfg(overrides: dict[str, str]) -> TrainConfig:
    over = {"threads": "1", "progress": "false", "device": "cpu", **overrides}
    return build_options(TrainConfig, overrides=over)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def _grad(model, x, y) -> tuple[float, torch.Tensor]:
    """Loss and flat gradient of batch (x, y), batch-statistics BN; running statistics left untouched."""
    saved = [(b, b.clone()) for b in model.buffers()]
    was = model.training
    model.train()
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, params)
    for b, v in saved:
        b.copy_(v)
    model.train(was)
    return float(loss.detach()), torch.cat([t.reshape(-1).double() for t in g])


class _Branch:
    def __init__(self, cfg, data, ckpt):
        with torch.random.fork_rng(devices=[]):
            self.model = build_model(cfg, data.num_classes)
        self.opt = build_optimizer(self.model, cfg)
        restore_checkpoint(ckpt, self.model, self.opt, rng=False)
        self.cfg = cfg

    def step(self, x, y, lr):
        loss, _ = train_step(self.model, self.opt, x, y, lr, None, self.cfg.label_smoothing)
        return float(loss)


def _record_points(K: int, every: int) -> list[int]:
    pts = set(range(0, K + 1, every)) | {K} | {int(v) for v in np.unique(np.round(np.geomspace(1, max(K, 1), 8)))}
    return sorted(p for p in pts if 0 <= p <= K)


# ---------------------------------------------------------------------------------------------- speed


def speed(overrides: dict[str, str], repeats: int = 5, steps: int = 20) -> dict:
    """Median s/step of the train step and of building the (augmented) batch; interleaved repeats."""
    cfg = resolve_config(_cfg(overrides))
    with deterministic_mode(True, cfg.threads):
        data = build_data(cfg)
        order = BatchOrder(len(data.train), cfg.batch_size, cfg.data_seed)
        model = build_model(cfg, data.num_classes)
        opt = build_optimizer(model, cfg)
        plain = dataclasses.replace(cfg, augment_strength=0.0)
        pdata = build_data(plain)
        for t in range(3):
            x, y = data.batch_at(order, t, "cpu", augment=cfg.augment)
            train_step(model, opt, x, y, cfg.lr)
        tb, tp, ts = [], [], []
        for _r in range(repeats):
            t0 = time.perf_counter()
            for t in range(steps):
                x, y = data.batch_at(order, t, "cpu", augment=cfg.augment)
            tb.append((time.perf_counter() - t0) / steps)
            t0 = time.perf_counter()
            for t in range(steps):
                pdata.batch_at(order, t, "cpu", augment=False)
            tp.append((time.perf_counter() - t0) / steps)
            t0 = time.perf_counter()
            for _t in range(steps):
                train_step(model, opt, x, y, cfg.lr)
            ts.append((time.perf_counter() - t0) / steps)
    b, p, s = statistics.median(tb), statistics.median(tp), statistics.median(ts)
    return {"config": {k: getattr(cfg, k) for k in ("model", "width", "image_size", "batch_size", "augment_strength",
                                                     "threads")},
            "s_per_train_step": s, "s_per_batch": b, "s_per_plain_batch": p,
            "steps_per_s": 1.0 / (s + b), "augment_cost_vs_step": (b - p) / s,
            "train_step_samples": ts, "batch_samples": tb, "load_avg": _load()}


def _load():
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- train


def train_run(out: Path, overrides: dict[str, str]) -> dict:
    cfg = _cfg(overrides)
    S = int(round(0.75 * cfg.steps))
    over = {"checkpoint_steps": f"{S}", "checkpoint_every": str(max(1, cfg.steps // 4)),
            "eval_every": str(max(1, cfg.steps // 10)), **overrides}
    cfg = _cfg(over)
    t0 = time.perf_counter()
    summary = train(cfg, out)
    wall = time.perf_counter() - t0
    return {"train_wall_s": wall, "summary": summary, "plateau": plateau(out), "load_avg": _load()}


def plateau(run: Path, length: int | None = None) -> dict:
    """(a) on the first ``length`` steps of the run (a constant-lr run of that length is this prefix)."""
    p = training_plateau(run, length)
    rows = read_csv(Path(run) / "metrics.csv")[:p.steps]
    loss = np.array([float(r["train_loss"]) for r in rows])
    prev, last, ratio = p.prev_quarter_loss, p.last_quarter_loss, p.ratio
    tt = np.array([float(r["time_s"]) for r in rows])
    evals = read_csv(Path(run) / "evals.csv")
    return {"steps": len(loss), "prev_quarter_loss": prev, "last_quarter_loss": last, "ratio": ratio,
            "holds": abs(ratio - 1) <= PLATEAU_TOL,
            "loss_by_tenth": [float(np.mean(c)) for c in np.array_split(loss, 10)],
            "steps_per_s_in_run": (len(tt) - 1) / max(tt[-1] - tt[0], 1e-9) if len(tt) > 1 else None,
            "val": [(int(e["step"]), float(e["val_loss"]), float(e["val_acc"])) for e in evals
                    if length is None or int(e["step"]) <= length]}


# ---------------------------------------------------------------------------------------------- probe


def probe(run: Path, step: int | None = None, premise_steps: int = 150, eq13_steps: int = 600,
          eq13_factors=(1.0, 0.5, 0.25), record_every: int = 10, threads: int = 1) -> dict:
    run = Path(run)
    cfg = load_config(run)
    cfg = dataclasses.replace(cfg, threads=threads)
    ck = list_checkpoints(run)
    S = int(step) if step is not None else min(ck, key=lambda s: abs(s - 0.75 * ck[-1]))
    with deterministic_mode(True, threads):
        data = build_data(cfg)
        order = BatchOrder(len(data.train), cfg.batch_size, cfg.data_seed)
        ckpt = load_checkpoint(find_checkpoint(run, S))
        lr = lr_at(cfg, S)
        B = cfg.batch_size
        out = {"run": str(run), "step": S, "lr": lr, "config": dataclasses.asdict(cfg), "load_avg_start": _load()}
        out["plateau"] = plateau(run)
        out["memorisation"] = _memorisation(run, S, threads)
        if premise_steps:
            t0 = time.perf_counter()
            out["premise"] = _premise(cfg, data, order, ckpt, S, B, lr, premise_steps, record_every)
            out["premise"]["wall_s"] = time.perf_counter() - t0
        if eq13_steps:
            t0 = time.perf_counter()
            out["eq13"] = _eq13(cfg, data, order, ckpt, S, lr, eq13_steps, eq13_factors, record_every)
            out["eq13"]["wall_s"] = time.perf_counter() - t0
        out["load_avg_end"] = _load()
    return out


def _memorisation(run, S, threads) -> dict:
    """(b) by :func:`realnet.probes.memorisation` (10 held-out vs 10 fresh batches), in the probe's JSON layout."""
    m = memorisation(run, S, n_batches=10, clean_samples=2048, device="cpu", threads=threads, deterministic=True)
    r = {"batch_bn": {"heldout_loss": m.heldout_loss, "fresh_train_loss": m.fresh_train_loss, "ratio": m.ratio},
         "eval_bn": {"heldout_loss": m.heldout_loss_eval_bn, "fresh_train_loss": m.fresh_train_loss_eval_bn,
                     "ratio": m.ratio_eval_bn},
         "clean_train": {"loss": m.clean_train_loss, "acc": m.clean_train_acc},
         "clean_val": {"loss": m.clean_val_loss, "acc": m.clean_val_acc}}
    r["ratio"] = m.ratio
    r["holds"] = m.ratio < MEMORISED_MAX
    r["heldout_augmented"] = m.heldout_augmented
    return r


def _premise(cfg, data, order, ckpt, S, B, lr, K, every) -> dict:
    fixed = {"heldout": data.fixed_batches("heldout", 1, min(B, len(data.heldout)), FIXED_SEED, "cpu")[0],
             "train": data.fixed_batches("train", 1, B, FIXED_SEED, "cpu")[0]}
    schedules = {"constant": lambda t: lr, "linear": lambda t: lr * (K - t) / K, "half": lambda t: lr / 2}
    rec = set(_record_points(K, every))
    res = {"steps": K, "record_every": every, "schedules": {}}
    for name, sched in schedules.items():
        br = _Branch(cfg, data, ckpt)
        g0, l0 = {}, {}
        track = {k: {"t": [], "loss": [], "norm_ratio": [], "cos": []} for k in fixed}
        trl = []
        for t, (x, y) in zip(range(K + 1), data.train_batches(order, S, S + K + 1, "cpu", augment=cfg.augment)):
            if t in rec:
                for k, (fx, fy) in fixed.items():
                    loss, g = _grad(br.model, fx, fy)
                    if t == 0:
                        g0[k], l0[k] = g, loss
                    track[k]["t"].append(t)
                    track[k]["loss"].append(loss)
                    track[k]["norm_ratio"].append(float(g.norm() / g0[k].norm()))
                    track[k]["cos"].append(float(g @ g0[k] / (g.norm() * g0[k].norm())))
            if t < K:
                trl.append(br.step(x, y, sched(t)))
        summ = {}
        for k, tr in track.items():
            c = fixed_batch_change(tr["loss"], tr["norm_ratio"])
            summ[k] = {"loss_start": c.loss_start, "loss_end": c.loss_end,
                       "loss_end_over_start": c.loss_end_over_start,
                       "loss_min_over_start": c.loss_min_over_start,
                       "gradnorm_max_change": c.gradnorm_max_change,
                       "gradnorm_end_ratio": c.gradnorm_end_ratio, "min_cos_start": float(min(tr["cos"])),
                       "holds": bool(c.loss_end_over_start >= FIT_MIN and c.gradnorm_max_change < GRADNORM_FACTOR_MAX),
                       "trace": tr}
        summ["train_loss_first_last_tenth"] = [float(np.mean(trl[:max(1, K // 10)])),
                                               float(np.mean(trl[-max(1, K // 10):]))]
        res["schedules"][name] = summ
    return res


def _filters(model) -> torch.Tensor:
    """Conv filters (each output channel) normalised to unit norm, flattened: the scale-free part of the
    weights that BatchNorm makes the function invariant to."""
    out = []
    for _name, p in model.named_parameters():
        if p.dim() == 4:
            w = p.detach().double().reshape(p.shape[0], -1)
            out.append((w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)).reshape(-1))
    return torch.cat(out)


def _fc(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for n, p in model.named_parameters() if n.startswith("fc.")])


@torch.no_grad()
def _logp(model, x) -> torch.Tensor:
    saved = [(b, b.clone()) for b in model.buffers()]
    was = model.training
    model.train()
    out = F.log_softmax(model(x).double(), 1)
    for b, v in saved:
        b.copy_(v)
    model.train(was)
    return out


def _eq13(cfg, data, order, ckpt, S, lr, K, factors, every) -> dict:
    """Pairs of side-trips (main order / data seed + 1) at lr * f; distances in weights, in BN-scale-free
    conv filters, in the classifier layer, and in function space (rms log-prob difference on a fixed
    held-out batch, batch-statistics BN)."""
    order_b = BatchOrder(len(data.train), cfg.batch_size, cfg.data_seed + 1)
    probe_x = data.fixed_batches("heldout", 1, min(256, len(data.heldout)), 777, "cpu")[0][0]
    rec = sorted(set(_record_points(K, every)))
    res = {"steps": K, "factors": list(factors), "pairs": {}}
    for f in factors:
        a, b = _Branch(cfg, data, ckpt), _Branch(cfg, data, ckpt)
        v0 = _flat(a.model)
        tr: dict[str, list] = {k: [] for k in ("t", "dist", "dist_from_start_A", "dist_filters", "dist_fc",
                                               "dist_function", "weight_norm_A")}
        ita = data.train_batches(order, S, S + K, "cpu", augment=cfg.augment)
        itb = data.train_batches(order_b, S, S + K, "cpu", augment=cfg.augment)
        la = []
        for t in range(K + 1):
            if t in rec:
                va, vb = _flat(a.model), _flat(b.model)
                tr["t"].append(t)
                tr["dist"].append(float((va - vb).norm()))
                tr["dist_from_start_A"].append(float((va - v0).norm()))
                tr["dist_filters"].append(float((_filters(a.model) - _filters(b.model)).norm()))
                tr["dist_fc"].append(float((_fc(a.model) - _fc(b.model)).norm()))
                tr["dist_function"].append(float((_logp(a.model, probe_x) - _logp(b.model, probe_x))
                                                 .pow(2).sum(1).mean().sqrt()))
                tr["weight_norm_A"].append(float(va.norm()))
            if t < K:
                xa, ya = next(ita)
                xb, yb = next(itb)
                la.append((a.step(xa, ya, lr * f) + b.step(xb, yb, lr * f)) / 2)
        ts_ = np.array(tr["t"])
        bins = np.array_split(np.array(la), max(1, K // 50))
        pair = {"lr": lr * f, **tr, "train_loss_quarters": [float(np.mean(c)) for c in np.array_split(np.array(la), 4)],
                "train_loss_per_50_steps": [float(np.mean(c)) for c in bins]}
        for key in ("dist", "dist_filters", "dist_fc", "dist_function"):
            d_ = np.array(tr[key])
            tail = d_[ts_ >= 0.75 * K]
            prev = d_[(ts_ >= 0.5 * K) & (ts_ < 0.75 * K)]
            plateau_d = float(tail.mean())
            t90 = next((int(t) for t, v in zip(ts_, d_) if v >= 0.9 * plateau_d), None)
            growth = plateau_d / float(prev.mean()) if len(prev) else float("nan")
            pair[key + "_summary"] = {"end": float(d_[-1]), "last_quarter_mean": plateau_d, "t90": t90,
                                      "growth_last_vs_prev_quarter": growth,
                                      "saturated": bool(abs(growth - 1) <= SAT_TOL)}
        pair.update(end_distance=pair["dist_summary"]["end"],
                    last_quarter_mean=pair["dist_summary"]["last_quarter_mean"],
                    t90=pair["dist_summary"]["t90"],
                    growth_last_vs_prev_quarter=pair["dist_summary"]["growth_last_vs_prev_quarter"],
                    saturated=pair["dist_summary"]["saturated"])
        res["pairs"][str(f)] = pair
    lrs = np.log(np.array([lr * f for f in factors]))
    if len(factors) >= 2:
        for key in ("dist", "dist_filters", "dist_fc", "dist_function"):
            for stat in ("end", "last_quarter_mean"):
                y = np.log(np.array([res["pairs"][str(f)][key + "_summary"][stat] for f in factors]))
                res[f"slope_{key}_{stat}"] = float(np.polyfit(lrs, y, 1)[0])
    return res


# ---------------------------------------------------------------------------------------------- CLI


def _split(argv):
    known, over = [], {}
    i = 0
    flags = {"--out", "--step", "--premise-steps", "--eq13-steps", "--eq13-factors", "--record-every", "--json",
             "--repeats", "--lengths"}
    while i < len(argv):
        tok = argv[i]
        key = tok.split("=", 1)[0]
        if key in flags or not tok.startswith("--"):
            known.append(tok)
            if "=" not in tok and tok.startswith("--") and i + 1 < len(argv):
                known.append(argv[i + 1])
                i += 1
        else:
            k = tok[2:]
            if "=" in k:
                k, v = k.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                v = argv[i + 1]
                i += 1
            else:
                v = "true"
            over[k.replace("-", "_")] = v
        i += 1
    return known, over


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("speed", "train", "probe", "all", "plateau", "table"))
    ap.add_argument("run", nargs="*", help="run directory (probe, plateau); result files (table)")
    ap.add_argument("--out", help="run directory to create (train, all)")
    ap.add_argument("--step", type=int, default=None, help="branch step (default: checkpoint nearest 75%%)")
    ap.add_argument("--premise-steps", type=int, default=150)
    ap.add_argument("--eq13-steps", type=int, default=600, help="0 = skip (e)")
    ap.add_argument("--eq13-factors", default="1,0.5,0.25")
    ap.add_argument("--record-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--lengths", default="", help="plateau: comma-separated prefix lengths")
    if any(a in ("-h", "--help") for a in argv):
        ap.parse_args(["--help"])
    known, over = _split(argv)
    a = ap.parse_args(known)
    factors = tuple(float(v) for v in a.eq13_factors.split(","))
    threads = int(over.get("threads", 1))
    res: dict = {"command": a.command, "overrides": over}
    if a.command == "speed":
        res["speed"] = speed(over, a.repeats)
    if a.command in ("train", "all"):
        if not a.out:
            ap.error("--out is required")
        res["train"] = train_run(Path(a.out), over)
    if a.command == "table":
        print(table([json.loads(Path(f).read_text()) for f in a.run]))
        return
    a.run = a.run[0] if a.run else None
    if a.command == "plateau":
        lengths = [int(v) for v in a.lengths.split(",") if v] or [None]
        res["plateau"] = {str(n): plateau(Path(a.run), n) for n in lengths}
        print(json.dumps({n: {k: v[k] for k in ("prev_quarter_loss", "last_quarter_loss", "ratio", "holds")}
                          for n, v in res["plateau"].items()}, indent=1))
        return
    if a.command in ("probe", "all"):
        run = Path(a.run or a.out)
        res["probe"] = probe(run, a.step, a.premise_steps, a.eq13_steps, factors, a.record_every, threads)
    res["provenance"] = provenance(seed=None, config=over)
    text = json.dumps(res, indent=1, default=str)
    if a.json:
        Path(a.json).write_text(text)
    print(json.dumps(_headline(res), indent=1, default=str))


def table(results: list[dict]) -> str:
    """Markdown rows: configuration, (a) at the branch run's length, (b), worst case of (c)."""
    head = ("| run | strength | lr | wd | N | S | (a) last/prev quarter | (b) held-out/fresh | (c) min loss end/start "
            "| (c) max grad-norm change | (c) steps | clean val acc at S |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for r in results:
        p = r.get("probe", r)
        c = p["config"]
        S = p["step"]
        N = int(c["steps"]) if int(round(0.75 * c["steps"])) == S else int(round(S / 0.75))
        try:
            a_txt = f"{plateau(Path(p['run']), N)['ratio']:.3f}"
        except (OSError, ValueError):  # run moved, or a copy shorter than N: (a) needs the full run
            a_txt = f"n/a (metrics < {N} steps)"
        m = p["memorisation"]
        if "premise" in p:
            items = [v for sch in p["premise"]["schedules"].values()
                     for k, v in sch.items() if k in ("heldout", "train")]
            lo = min(v["loss_end_over_start"] for v in items)
            gn = max(v["gradnorm_max_change"] for v in items)
            prem = f"{lo:.2f} | {gn:.2f} | {p['premise']['steps']}"
        else:
            prem = "- | - | -"
        rows.append(f"| {Path(p['run']).name} | {c.get('augment_strength', 0.0):g} | {c['lr']:g} "
                    f"| {c['weight_decay']:g} "
                    f"| {N} | {S} | {a_txt} | {m['ratio']:.3f} | {prem} | {m['clean_val']['acc']:.3f} |")
    return "\n".join(rows)


def _headline(res: dict) -> dict:
    h = {}
    if "speed" in res:
        s = res["speed"]
        h["speed"] = {k: s[k] for k in ("config", "s_per_train_step", "s_per_batch", "s_per_plain_batch", "steps_per_s",
                                        "augment_cost_vs_step", "load_avg")}
    if "train" in res:
        t = res["train"]
        h["train"] = {"wall_s": t["train_wall_s"], "steps_per_s": t["summary"]["steps_per_s"],
                      "plateau": {k: t["plateau"][k] for k in ("prev_quarter_loss", "last_quarter_loss", "ratio",
                                                              "holds", "loss_by_tenth", "val")}}
    if "probe" in res:
        p = res["probe"]
        m = p["memorisation"]
        h["memorisation"] = {"ratio": m["ratio"], "holds": m["holds"], "batch_bn": m["batch_bn"],
                             "eval_bn": m["eval_bn"], "clean_train": m["clean_train"], "clean_val": m["clean_val"]}
        h["premise"] = {} if "premise" not in p else {name: {k: {kk: v[kk] for kk in ("loss_end_over_start",
                                                                                     "loss_min_over_start",
                                                         "gradnorm_max_change", "min_cos_start", "holds")}
                               for k, v in sch.items() if k in ("heldout", "train")}
                        for name, sch in p["premise"]["schedules"].items()}
        h["premise_wall_s"] = p.get("premise", {}).get("wall_s")
        if "eq13" in p:
            e = p["eq13"]
            h["eq13"] = {f: {k: v[k] for k in ("lr", "end_distance", "last_quarter_mean", "t90",
                                                "growth_last_vs_prev_quarter", "saturated")}
                         for f, v in e["pairs"].items()}
            h["eq13"]["slopes"] = {k: e[k] for k in e if k.startswith("slope")}
            h["eq13"]["by_measure"] = {f: {k: v[k] for k in v if k.endswith("_summary")} for f, v in e["pairs"].items()}
            h["eq13"]["wall_s"] = e["wall_s"]
    return h


if __name__ == "__main__":
    main()
