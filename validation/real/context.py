"""The run and the side-trips shared by the real-network claims: :class:`RealContext`, passed to every claim.

A context is opened once per job (:meth:`RealContext.open`: trains the ``--quick`` / ``--full`` trajectory into
``OUT/run`` or checks an existing ``--run``, and fixes the replicates' branch points, :attr:`RealContext.replicates`);
after that nothing in it trains or computes on attribute access. :meth:`RealContext.replica` is the context of one
replicate (its branch point, its side-trip seed, its own figures and premises under ``OUT/r<i>``; its side-trips
under ``OUT/sidetrips/<key>-r<i>``); claims are evaluated on replicas and combined
(:func:`.replication.combine`). :meth:`RealContext.sidetrip` runs a side-trip request (:mod:`.requests`) into
``OUT/sidetrips/<key>`` or reads a finished one back (``Result.load``; the registry
:data:`realnet.sidetrips.SIDETRIPS` says which result class), keyed by its options, so a re-run resumes and
changed sizes are redone. :meth:`RealContext.regime` measures the regime premises (a), (b) at the branch point
once and keeps them in ``OUT/premises.json``.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from sgdtraj.files import atomic_write_text, read_json, write_json
from sgdtraj.outputs import OutputError

from .. import timings
from . import premises
from .config import RealConfig
from .replication import Replicate

__all__ = ["RealContext", "RealClaim", "Branch", "planned_branch", "planned_replicates", "existing_replicates",
           "replicate_seed"]


@dataclass(frozen=True)
class Branch:
    """Where the side-trips start: ``step`` (S, the branch checkpoint) and ``step2`` (fixed-batch's second one)."""

    step: int
    step2: int


def planned_branch(cfg: RealConfig, n_steps: int) -> Branch:
    """The branch points of a trained run of ``n_steps`` updates: S at ``branch_fraction`` of the run and S2 later
    by ``second_offset_fraction`` of it (capped at the end)."""
    S = int(round(cfg.branch_fraction * n_steps))
    S2 = min(n_steps, S + max(1, int(round(cfg.second_offset_fraction * n_steps))))
    return Branch(S, S2)


def planned_checkpoints(cfg: RealConfig, reps: list[Replicate]) -> list[int]:
    """The checkpoints a trained run keeps besides every ``steps // 6``-th: every branch point and second checkpoint,
    and every ``merge_checkpoint_every`` steps inside the replicates' blocks (the post-hoc merge's grid)."""
    every = max(1, int(cfg.merge_checkpoint_every))
    steps = {s for r in reps for s in (r.step, r.step2)}
    for r in reps:
        steps.update(range(r.step, r.end + 1, every))
        steps.add(r.end)
    return sorted(s for s in steps if 0 < s <= cfg.steps)


def replicate_seed(job_seed: int, index: int, replicates: int) -> int:
    """The side-trip seed of replicate ``index`` of a job of seed ``job_seed``: distinct for every (job, replicate)
    and never 0 (the side-trips' own constants)."""
    return int(job_seed) * int(replicates) + int(index) + 1


def planned_replicates(cfg: RealConfig, n_steps: int) -> list[Replicate]:
    """The replicates of a trained run of ``n_steps`` updates: branch points S_r = S_0 + r * spacing (S_0 at
    ``branch_fraction``, spacing ``replicate_spacing_fraction`` of the run), second checkpoints S_r + the
    ``second_offset_fraction`` offset, each block ending at S_r + spacing (capped at the run's end).
    ValueError (naming the option) when they do not fit into the run."""
    R = int(cfg.replicates)
    if R < 1:
        raise ValueError(f"replicates must be an integer >= 1, got {cfg.replicates!r}")
    S0 = int(round(cfg.branch_fraction * n_steps))
    gap = max(1, int(round(cfg.replicate_spacing_fraction * n_steps)))
    off = max(1, int(round(cfg.second_offset_fraction * n_steps)))
    reps = []
    for r in range(R):
        S = S0 + r * gap
        if S + off > n_steps:
            raise ValueError(f"replicate {r} branches at step {S} and needs step {S + off} (second_offset_fraction); "
                             f"the run has {n_steps} steps: lower replicates, branch_fraction or "
                             "replicate_spacing_fraction")
        reps.append(Replicate(r, S, S + off, replicate_seed(cfg.seed, r, R), min(n_steps, S + gap)))
    return reps


def existing_replicates(cfg: RealConfig, checkpoints: list[int]) -> list[Replicate]:
    """Replicates on an existing run: the plan of :func:`planned_replicates` for a run of its length, each point
    moved to the nearest checkpoint (branch points distinct, each with a later checkpoint): a run trained by this
    job's own plan gets exactly its replicates. ValueError when the run has too few checkpoints."""
    R = int(cfg.replicates)
    ck = sorted(int(s) for s in checkpoints)
    usable = ck[:-1]  # every branch needs a later checkpoint
    if R < 1 or len(usable) < R:
        raise ValueError(f"run has checkpoints {ck}: {R} replicates need at least {R + 1}")
    n = ck[-1]
    S0 = int(round(cfg.branch_fraction * n))
    gap = max(1, int(round(cfg.replicate_spacing_fraction * n)))
    off = max(1, int(round(cfg.second_offset_fraction * n)))
    chosen: list[int] = []
    for r in range(R):
        free = [s for s in usable if s not in chosen]
        chosen.append(min(free, key=lambda s: (abs(s - (S0 + r * gap)), s)))
    chosen.sort()
    reps = []
    for r, S in enumerate(chosen):
        later = [s for s in ck if s > S]
        step2 = min(later, key=lambda s: (abs(s - (S + off)), s))
        end = min(later, key=lambda s: (abs(s - (S + gap)), s))
        reps.append(Replicate(r, S, step2, replicate_seed(cfg.seed, r, R), end))
    return reps


def _existing_branch(checkpoints: list[int]) -> Branch:
    """An existing run's checkpoint nearest to 75 % of its length, and the next one (or the one before)."""
    target = 0.75 * checkpoints[-1]
    S = min(checkpoints, key=lambda s: abs(s - target))
    later = [s for s in checkpoints if s > S]
    return Branch(S, later[0] if later else [s for s in checkpoints if s < S][-1])


class RealContext:
    """The realnet run, its branch points and the side-trips of one report directory.

    cfg: the sizes. out: the directory of this context's figures and premise files (the report directory, or
    ``OUT/r<i>`` for a replica). run_dir: the realnet run (``OUT/run`` or ``--run``). branch: S and S2.
    replicates: the job's replicates. replicate: the one this context is (None: the job's own context).
    train_batch_size: the run's own batch size (read from its config). progress: show the side-trips' progress
    bars. Build it with :meth:`open` (trains or checks the run) or, in a worker process whose parent opened it,
    with :meth:`attach`; :meth:`replica` gives a replicate's context.
    """

    def __init__(self, cfg: RealConfig, out, run_dir, branch: Branch, progress: bool = False,
                 replicates: list[Replicate] | None = None, replicate: Replicate | None = None,
                 sidetrips_dir=None):
        self.cfg = cfg
        self.out = Path(out)
        self.run_dir = Path(run_dir)
        self.branch = branch
        self.progress = bool(progress)
        self.replicates = list(replicates or [])
        self.replicate = replicate
        self.sidetrips_dir = Path(sidetrips_dir) if sidetrips_dir is not None else self.out / "sidetrips"
        from realnet.trainer import load_config

        self.train_batch_size = int(load_config(self.run_dir).batch_size)
        self._loaded: dict[str, object] = {}  # key -> result read back in this process (identity checked)
        self._replicas: dict[int, "RealContext"] = {}

    def replica(self, rep: Replicate) -> "RealContext":
        """The context of replicate ``rep``: branch (S_r, S2_r), figures and premises under ``OUT/r<i>``, side-trips
        under ``OUT/sidetrips/<key>-r<i>`` with the replicate's side-trip seed (:meth:`request`)."""
        if self.replicate is not None:
            raise ValueError("replica() of a replica: call it on the job's context")
        if rep.index not in self._replicas:
            sub = self.out / f"r{rep.index}"
            sub.mkdir(parents=True, exist_ok=True)
            self._replicas[rep.index] = RealContext(self.cfg, sub, self.run_dir, Branch(rep.step, rep.step2),
                                                    self.progress, self.replicates, rep, self.sidetrips_dir)
        return self._replicas[rep.index]

    def request(self, name: str, key: str, options: dict | None = None) -> tuple[str, str, dict]:
        """A side-trip request as the job's context runs it: a replica's key gets the replicate's suffix and its
        options the replicate's branch step and side-trip ``seed`` (unchanged on the job's own context)."""
        options = dict(options or {})
        rep = self.replicate
        if rep is None:
            return name, key, options
        options.setdefault("step", rep.step)
        options["seed"] = rep.seed
        return name, key + rep.suffix, options

    @classmethod
    def open(cls, cfg: RealConfig, out, progress: bool = False) -> "RealContext":
        """Train (or resume) the trajectory into ``OUT/run``, or check ``cfg.run``; FileNotFoundError /
        ValueError name a missing or unusable ``--run``."""
        from realnet.checkpoint import list_checkpoints

        out = Path(out)
        if cfg.run:
            run = Path(cfg.run)
            if not run.is_dir():
                raise FileNotFoundError(f"--run directory not found: {str(run)!r}")
            ck = list_checkpoints(run)
            if len(ck) < 3:
                raise ValueError(f"run {str(run)!r} needs at least 3 checkpoints, has {ck}")
            reps = existing_replicates(cfg, ck)
            return cls(cfg, out, run, Branch(reps[0].step, reps[0].step2), progress, reps)
        from realnet.config import TrainConfig
        from realnet.trainer import train

        reps = planned_replicates(cfg, cfg.steps)
        run = out / "run"
        tc = TrainConfig(dataset=cfg.dataset, data_dir=cfg.data_dir, model=cfg.model, width=cfg.width,
                         steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         augment_strength=cfg.augment_strength, seed=cfg.seed,
                         checkpoint_every=max(1, cfg.steps // 6), checkpoint_steps=planned_checkpoints(cfg, reps),
                         eval_every=max(1, cfg.steps // 10),
                         threads=cfg.threads, device=cfg.device, eval_samples=cfg.eval_samples, progress=progress)
        done = (run / "summary.json").is_file()
        with timings.timed("training", resumed=done):
            train(tc, run)  # resumes if the run exists with the same config
        return cls(cfg, out, run, Branch(reps[0].step, reps[0].step2), progress, reps)

    @classmethod
    def attach(cls, cfg: RealConfig, out, run_dir) -> "RealContext":
        """The context of a run that its opener already trained or checked (worker processes): no training."""
        from realnet.checkpoint import list_checkpoints

        reps = existing_replicates(cfg, list_checkpoints(run_dir)) if cfg.run else planned_replicates(cfg, cfg.steps)
        return cls(cfg, out, run_dir, Branch(reps[0].step, reps[0].step2), False, reps)

    # ------------------------------------------------------------------------------------------ side-trips
    def identity(self, options: dict) -> tuple[int, str]:
        """(step, identity): the side-trip's options are part of its identity (changed sizes: redone)."""
        options = dict(options)
        if self.replicate is not None:
            options.setdefault("step", self.replicate.step)
            options["seed"] = self.replicate.seed
        step = options.pop("step", self.branch.step)
        return step, json.dumps(dict(run=str(self.run_dir.resolve()), step=step, **options), sort_keys=True)

    def finished(self, key: str, options: dict) -> bool:
        """Whether OUT/sidetrips/<key> holds a finished side-trip of these options (reused, not recomputed)."""
        d = self.sidetrips_dir / key
        marker = d / "validation_options.json"
        return ((d / "summary.json").exists() and marker.exists()
                and marker.read_text() == self.identity(options)[1])

    def sidetrip(self, name: str, key: str, options: dict | None = None):
        """Run (or read back) side-trip ``name`` into OUT/sidetrips/<key> with ``options``; its typed result."""
        from realnet.sidetrips import SIDETRIPS

        name, key, options = self.request(name, key, options)
        trip = SIDETRIPS[name]
        step, ident = self.identity(options)
        options.pop("step", None)
        cached = self._loaded.get(key)
        if cached is not None and cached[0] == ident:
            return cached[1]
        d = self.sidetrips_dir / key
        if self.finished(key, options | {"step": step}):
            try:
                result = trip.result.load(d)
                self._loaded[key] = (ident, result)
                return result
            except (ValueError, OSError, KeyError, TypeError):
                shutil.rmtree(d)  # unreadable: redo from scratch
        common = dict(device=self.cfg.device, threads=self.cfg.threads, progress=self.progress,
                      **({"data_dir": self.cfg.data_dir} if self.cfg.run and self.cfg.data_dir else {}))
        with timings.timed(f"sidetrip:{key}"):
            try:  # an unfinished side-trip of the same options resumes
                result = trip.function(self.run_dir, step, d, **common, **options)
            except OutputError as e:
                if e.reason not in ("identity", "foreign"):
                    raise
                shutil.rmtree(d)  # this report's own side-trip of other options: redo it from scratch
                result = trip.function(self.run_dir, step, d, **common, **options)
        # the phases a side-trip times itself (sgdtraj.timing.Stopwatch.as_dict(): {phase: {wall_s, cpu_s, calls}})
        for part, t in (getattr(result, "timing", None) or {}).items():
            timings.record(f"sidetrip:{key}:{part}", t["wall_s"], t["cpu_s"])
        atomic_write_text(d / "validation_options.json", ident)
        self._loaded[key] = (ident, result)
        return result

    # ------------------------------------------------------------------------------------------ premises
    def noise_scale(self):
        """The gradient noise scale at the branch point (:func:`realnet.probes.gradient_noise_scale` over
        ``cfg.noise_batches`` fresh training batches of the run's size), measured once and kept in
        ``OUT/noise_scale.json``."""
        from realnet.probes import gradient_noise_scale
        from realnet.regime import NoiseScale

        S = self.branch.step
        ident = dict(run=str(self.run_dir.resolve()), step=S, batches=self.cfg.noise_batches)
        path = self.out / "noise_scale.json"
        try:
            saved = read_json(path) if path.is_file() else None
        except (OSError, ValueError):
            saved = None
        if saved and saved.get("identity") == ident:
            return NoiseScale(**{k: _number(v) for k, v in saved["noise_scale"].items()})
        with timings.timed("noise-scale"):
            ns = gradient_noise_scale(self.run_dir, S, n_batches=self.cfg.noise_batches, device=self.cfg.device,
                                      threads=self.cfg.threads)
        write_json(path, dict(identity=ident, noise_scale=ns.to_dict()), nonfinite="string")
        return ns

    def regime(self) -> list:
        """Premises (a) plateau and (b) not memorised at the branch point (:mod:`.premises`), measured once and
        kept in ``OUT/premises.json`` (reused on a re-run while the run and the step are unchanged)."""
        from realnet.probes import memorisation
        from realnet.regime import Memorisation, Plateau, training_plateau

        S = self.branch.step
        ident = dict(run=str(self.run_dir.resolve()), step=S, batches=self.cfg.premise_batches)
        path = self.out / "premises.json"
        saved = None
        if path.is_file():
            try:
                saved = read_json(path)
            except (OSError, ValueError):
                saved = None
        if saved and saved.get("identity") == ident:
            plat = Plateau(**saved["plateau"]) if saved.get("plateau") else None
            mem = Memorisation(**saved["memorisation"])
        else:
            with timings.timed("regime"):
                try:
                    plat = training_plateau(self.run_dir)
                except (OSError, ValueError, KeyError):  # no usable metrics.csv (e.g. a copied run without it)
                    plat = None
                mem = memorisation(self.run_dir, S, n_batches=self.cfg.premise_batches,
                                   clean_samples=self.cfg.eval_samples, device=self.cfg.device,
                                   threads=self.cfg.threads)
            write_json(path, dict(identity=ident, plateau=asdict(plat) if plat else None, memorisation=mem.to_dict()))
        if plat is None:
            plat = Plateau(steps=0, prev_quarter_loss=math.nan, last_quarter_loss=math.nan, ratio=math.nan)
        return [premises.plateau_premise(plat, S), premises.memorisation_premise(mem)]


def _number(v):
    """A number read back from JSON written with ``nonfinite="string"`` (``"inf"``, ``"-inf"``; None: NaN)."""
    if v is None:
        return math.nan
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


@dataclass(frozen=True)
class RealClaim:
    """A real-network claim: ``evaluate(ctx) -> Verdict`` and the side-trips it reads,
    ``requests(ctx) -> [(name, key, options), ...]`` (:mod:`.requests`; the prefetch computes them first).
    ``scale``: how its replicate values combine (:func:`.replication.combine`): ``"linear"`` (mean) or ``"log"``
    (geometric mean: ratios spanning orders of magnitude). ``figure``: optional ``figure(ctx, replicas, verdicts)
    -> file name`` drawing one figure over every replicate into ``ctx.out`` (the combined verdict's figure; None:
    replicate 0's own figure)."""

    id: str
    evaluate: Callable[[RealContext], object]
    requests: Callable[[RealContext], list]
    scale: str = "linear"
    figure: Callable | None = None
