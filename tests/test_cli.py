"""The command lines as a user meets them: every ``--out`` kind for every CLI, interrupts, kills, locks, divergence.

The CLIs run for real, in their own processes: the matrix of ``--out`` kinds (and the other one-shot command lines)
through ``tests/cli_driver.py`` (one interpreter per CLI that forks a process per command line, so torch and numba
are imported once), the commands that need signals or concurrency as plain ``python -m`` subprocesses. Each check
looks at the exit code, the one-line stderr (no traceback) and the files before and after (SHA-256 of every file).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = ".sgd-trajectories.json"  # sgdtraj.outputs.MARKER (spelled out: the file must import on older checkouts)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

TRAIN = dict(dataset="digits", model="resnet20", width=4, steps=6, batch_size=16, lr=0.1, checkpoint_every=2,
             eval_every=0, eval_samples=32, progress=False, threads=1)
# the same run on the command line: the identity keys only (runtime flags such as --checkpoint-every left at
# their defaults: re-running a finished run this way must not touch it)
TRAIN_ID_ARGS = ["--dataset", "digits", "--model", "resnet20", "--width", "4", "--steps", "6", "--batch-size", "16",
                 "--lr", "0.1", "--progress", "false", "--threads", "1"]
TRAIN_ARGS = TRAIN_ID_ARGS + ["--checkpoint-every", "2", "--eval-every", "0", "--eval-samples", "32"]
SWEEP_OPTS = dict(num_lrs=3, heldout_batches=1, batch_size=16, progress=False, threads=1)
SWEEP_ARGS = ["--num-lrs", "3", "--heldout-batches", "1", "--batch-size", "16", "--progress", "false", "--threads", "1"]
SPEC = {"sweep": {"name": "tiny", "seed": 7, "kernels": ["Last", "EMA"], "quantities": ["stationary_loss"]},
        "params": {"spectrum": "two-scale", "fast": 1.0, "slow": 0.1, "n_fast": 1, "n_slow": 1, "decay": 0.1},
        "grid": {"lr": [0.05, 0.1]}}
TINY_SYNTHETIC = "SyntheticConfig(chains_curve=200, chains_stationary=3000, steps_curve=6000, record_every=100, seed=7)"
REPORT_ARGS = ["--synthetic-only", "--only", "eq20-two-point", "--no-progress"]


# ================================================================================================ helpers
def snapshot(*roots: Path) -> dict[str, str]:
    """{path: sha256} of every file under ``roots`` (hidden files included; a lock file ``.lock``, which names its
    last holder, counts by its presence only)."""
    out = {}
    for root in roots:
        root = Path(root)
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for p in paths:
            out[str(p)] = "lock" if p.name == ".lock" else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(stderr: str) -> str:
    """The single line a refused command prints (no traceback, nothing else)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    return lines[0]


def python_m(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ENV, **kw)


def marker_kind(d: Path):
    p = Path(d) / MARKER
    return json.loads(p.read_text())["kind"] if p.is_file() else None


def unwritable_dir(path: Path) -> bool:
    """Make ``path`` (an empty directory) unwritable, also for root (chattr +i); False if that is impossible."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
    else:
        subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    try:
        (path / "probe").write_text("x")
    except OSError:
        return True
    (path / "probe").unlink()
    return False


def make_writable(path: Path) -> None:
    if path.exists():
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755)


class Case:
    """One command line of the driver: argv, working directory, what to expect, and what it saw."""

    def __init__(self, name, cli, argv, root: Path, expect_rc, out: Path | None = None, watch=(), contains=()):
        self.name, self.cli, self.argv, self.root = name, cli, [str(a) for a in argv], root
        self.expect_rc, self.out, self.watch, self.contains = expect_rc, out, list(watch), list(contains)
        self.rc = self.stdout = self.stderr = None
        self.before = self.after = None

    def job(self) -> dict:
        return {"argv": self.argv, "cwd": str(self.root), "stdout": str(self.root.parent / f"{self.name}.stdout"),
                "stderr": str(self.root.parent / f"{self.name}.stderr")}


def run_driver(module: str, cases: list[Case], setup: str = "", timeout: int = 600) -> None:
    for c in cases:
        c.before = snapshot(*c.watch)
    job = {"module": module, "setup": setup, "cases": [c.job() for c in cases]}
    r = subprocess.run([sys.executable, str(REPO / "tests" / "cli_driver.py")], input=json.dumps(job), cwd=REPO,
                       capture_output=True, text=True, timeout=timeout, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    for c, rc in zip(cases, codes):
        c.rc = rc
        c.stdout = (c.root.parent / f"{c.name}.stdout").read_text()
        c.stderr = (c.root.parent / f"{c.name}.stderr").read_text()
        c.after = snapshot(*c.watch)
    print(r.stderr[-6000:], file=sys.stderr)  # the driver's timing per command line (shown by pytest on failure)


# ================================================================================================ outputs to aim at
@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One finished output of every kind (made through the Python API): run, side-trip, sweep, report."""
    import realnet
    from quadsgd.sweeps import run_spec
    from realnet.config import TrainConfig
    from validation.reproduction import reproduce
    from validation.synthetic import SyntheticConfig

    base = tmp_path_factory.mktemp("outputs")
    run = base / "run"
    realnet.train(TrainConfig(**TRAIN), run)
    trip = base / "sidetrip"
    realnet.lr_sweep(run, 4, trip, **SWEEP_OPTS)
    sweep = base / "sweep"
    run_spec(copy.deepcopy(SPEC), sweep, scheduler="serial", progress=False, figures=False)
    report = base / "report"
    tiny = eval(TINY_SYNTHETIC, {"SyntheticConfig": SyntheticConfig})
    reproduce(report, real=False, only=["eq20-two-point"], progress=False, synthetic_config=tiny)
    spec = base / "spec.toml"
    spec2 = base / "spec-seed8.toml"
    import tomli_w

    spec.write_text(tomli_w.dumps(SPEC))
    other = copy.deepcopy(SPEC)
    other["sweep"]["seed"] = 8
    spec2.write_text(tomli_w.dumps(other))
    return {"run": run, "sidetrip": trip, "sweep": sweep, "report": report, "spec": spec, "spec2": spec2}


CLIS = {"train": ("realnet", "run"), "sidetrip": ("realnet", "sidetrip"), "sweep": ("quadsgd", "sweep"),
        "reproduce": ("validation", "report")}
OUT_KINDS = ["empty", "missing", "file", "under-file", "unwritable", "run", "sidetrip", "sweep", "report",
             "foreign-files", "same-kind-other-job", "same-job", "unmarked-same-job", "inside-another-output"]
SUCCEED = {"empty", "missing", "same-job"}
MATRIX = [(cli, kind) for cli in CLIS for kind in OUT_KINDS if kind != CLIS[cli][1]]


def _argv(cli, out, o, other_job=False):
    if cli == "train":
        return ["train", "--out", out, *TRAIN_ID_ARGS] + (["--seed", "1"] if other_job else [])
    if cli == "sidetrip":
        return ["sidetrip", "lr-sweep", "--run", o["run"], "--step", "4", "--out", out, *SWEEP_ARGS,
                *(["--num-lrs", "4"] if other_job else [])]
    if cli == "sweep":
        return ["sweep", o["spec2"] if other_job else o["spec"], "--out", out, "--scheduler", "serial",
                "--no-progress", "--no-figures"]
    return ["reproduce", *REPORT_ARGS, "--out", out] + (["--full"] if other_job else [])


def _matrix_case(cli, kind, o, base: Path) -> Case:
    root = base / f"{cli}-{kind}"
    root.mkdir()
    own = CLIS[cli][1]
    out = root / "out"
    watch = [root]
    if kind == "empty":
        out.mkdir()
    elif kind == "missing":
        out = root / "a" / "b" / "out"
    elif kind == "file":
        out.write_text("a user's file\n")
    elif kind == "under-file":
        (root / "f").write_text("a user's file\n")
        out = root / "f" / "out"
    elif kind == "unwritable":
        if not unwritable_dir(out):
            return None
    elif kind in ("run", "sidetrip", "sweep", "report"):
        shutil.copytree(o[kind], out)
    elif kind == "foreign-files":
        out.mkdir()
        (out / "notes.txt").write_text("not an output of these tools\n")
    elif kind in ("same-kind-other-job", "same-job"):
        shutil.copytree(o[own], out)
    elif kind == "unmarked-same-job":  # the same job's files without the ownership marker: not claimed
        shutil.copytree(o[own], out)
        (out / MARKER).unlink(missing_ok=True)
    elif kind == "inside-another-output":
        shutil.copytree(o["run" if own != "run" else "sweep"], root / "other")
        out = root / "other" / "sub"
    if cli == "sidetrip":
        watch.append(o["run"])
    argv = _argv(cli, out, o, other_job=kind == "same-kind-other-job")
    return Case(f"{cli}-{kind}", cli, argv, root, 0 if kind in SUCCEED else 2, out, watch)


def _extra_realnet_cases(o, base: Path) -> list[Case]:
    """Flags, divergence, damaged checkpoints, stale temporary files, --out inside --run."""
    cases = []

    def case(name, argv, expect, out=None, watch=(), prep=None):
        root = base / name
        root.mkdir()
        ctx = {"root": root, "out": root / "out"}
        if prep is not None:
            prep(ctx)
        argv = [a(ctx) if callable(a) else a for a in argv]
        cases.append(Case(name, "realnet", argv, root, expect, ctx["out"], [root, *watch]))

    def copy_run(ctx):
        shutil.copytree(o["run"], ctx["root"] / "run")

    def corrupt(step):
        def prep(ctx):
            copy_run(ctx)
            p = ctx["root"] / "run" / "checkpoints" / f"step_{step:09d}.pt"
            p.write_bytes(p.read_bytes()[:2000])
        return prep

    def stale(ctx):
        copy_run(ctx)
        (ctx["root"] / "run" / "checkpoints" / ".step_000000008.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
        (ctx["root"] / "run" / ".metrics.csv.abc123.tmp").write_text("step,epoch\n")

    run = lambda ctx: ctx["root"] / "run"  # noqa: E731
    out = lambda ctx: ctx["out"]  # noqa: E731
    case("out-no-value", ["train", *TRAIN_ARGS, "--out"], 2)
    case("out-no-value-before-flag", ["train", "--out", "--steps", "3"], 2)
    case("eval-steps-as-help-shows", ["sidetrip", "divergence", "--run", o["run"], "--step", "2", "--steps", "2",
                                      "--eval-steps", "[0, 1]", "--record-every", "1", "--bn-batches", "1",
                                      "--train-eval-samples", "32", "--val-samples", "32", "--snapshots", "2",
                                      "--progress", "false", "--threads", "1", "--out", out], 0, watch=[o["run"]])
    case("checkpoint-steps-as-list", ["train", "--out", out, "--width", "4", "--batch-size", "16", "--steps", "3",
                                      "--progress", "false", "--checkpoint-steps", "[1, 2]", "--checkpoint-every", "0",
                                      "--eval-every", "0", "--eval-samples", "16", "--threads", "1"], 0)
    case("train-diverges", ["train", "--out", out, *TRAIN_ARGS, "--steps", "40", "--lr", "1e9"], 1)
    case("sidetrip-diverges", ["sidetrip", "alignment", "--run", o["run"], "--step", "4", "--steps", "10",
                               "--lr", "1e9", "--batch-pairs", "1", "--progress", "false", "--out", out], 1,
         watch=[o["run"]])
    case("sidetrip-damaged-checkpoint", ["sidetrip", "lr-sweep", "--run", run, "--step", "4", "--out", out,
                                         *SWEEP_ARGS], 2, prep=corrupt(4))
    case("train-damaged-latest-checkpoint", ["train", "--out", run, *TRAIN_ARGS[:6], "--steps", "8",
                                             *TRAIN_ARGS[8:]], 2, prep=corrupt(6))
    case("train-removes-stale-temps", ["train", "--out", run, *TRAIN_ID_ARGS], 0, prep=stale)
    case("sidetrip-out-inside-its-run", ["sidetrip", "lr-sweep", "--run", run, "--step", "4",
                                         "--out", lambda ctx: ctx["root"] / "run" / "trip", *SWEEP_ARGS], 2,
         prep=copy_run)
    case("sidetrip-run-missing", ["sidetrip", "lr-sweep", "--run", lambda ctx: ctx["root"] / "nope", "--step", "4",
                                  "--out", out, *SWEEP_ARGS], 2)
    return cases


def _extra_validation_cases(o, base: Path) -> list[Case]:
    cases = []

    def case(name, argv, expect, root=None, prep=None):
        root = root or base / name
        root.mkdir(exist_ok=True)
        if prep is not None:
            prep(root)
        cases.append(Case(name, "validation", [a(root) if callable(a) else a for a in argv], root, expect,
                          root / "out", [root]))

    out = lambda r: r / "out"  # noqa: E731
    case("dataset-without-data-dir", ["reproduce", "--dataset", "imagenet", "--no-progress", "--out", out], 2)
    case("run-missing", ["reproduce", "--run", lambda r: r / "nope", "--no-progress", "--out", out], 2)
    case("out-inside-run", ["reproduce", "--run", lambda r: r / "run", "--no-progress",
                            "--out", lambda r: r / "run" / "report"], 2,
         prep=lambda r: shutil.copytree(o["run"], r / "run"))
    merge = base / "only-merge"
    case("only-first", ["reproduce", "--synthetic-only", "--only", "eq13-radius-sqrt-lr", "--no-progress", "--out",
                        out], 0, root=merge)
    case("only-second", ["reproduce", "--synthetic-only", "--only", "eq20-two-point", "--no-progress", "--out",
                         out], 0, root=merge)
    return cases


_SETUP = {
    "realnet": "import realnet, realnet.cli, realnet.sidetrips, torch\n"
               "torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled())  # its lazy imports",
    "quadsgd": "import quadsgd.sweeps, pandas, pyarrow.parquet",  # (not __main__: run_module executes it)
    # test sizes: the synthetic claims at the sizes of tests/test_validation.py (the CLI logic is unchanged)
    "validation": "import validation.reproduction, validation.real, realnet\n"
                  "from validation.synthetic import SyntheticConfig\n"
                  f"SyntheticConfig.quick = classmethod(lambda cls: {TINY_SYNTHETIC})\n"
                  "SyntheticConfig.full = classmethod(lambda cls: SyntheticConfig(chains_curve=200, "
                  "chains_stationary=3000, steps_curve=6000, record_every=100, seed=8))",
}


@pytest.fixture(scope="module")
def cli_results(outputs, tmp_path_factory):
    """Every matrix case and extra command line, run through the driver (one interpreter per package)."""
    base = tmp_path_factory.mktemp("cli")
    cases = {}
    for cli, kind in MATRIX:
        c = _matrix_case(cli, kind, outputs, base)
        if c is not None:
            cases[c.name] = c
    for c in _extra_realnet_cases(outputs, base) + _extra_validation_cases(outputs, base):
        cases[c.name] = c
    try:
        for module in ("realnet", "quadsgd", "validation"):
            group = [c for c in cases.values() if CLIS.get(c.cli, (c.cli,))[0] == module]
            run_driver(module, group, _SETUP[module])
    finally:
        for c in cases.values():
            if c.name.endswith("unwritable"):
                make_writable(c.out)
    return cases


@pytest.mark.parametrize("cli,kind", MATRIX, ids=[f"{c}-{k}" for c, k in MATRIX])
def test_every_cli_with_every_kind_of_out(cli_results, outputs, cli, kind):
    c = cli_results.get(f"{cli}-{kind}")
    if c is None:
        pytest.skip("cannot make a directory unwritable here")
    assert c.rc == c.expect_rc, (c.argv, c.stdout[-2000:], c.stderr[-3000:])
    if c.expect_rc != 0:
        line = one_line(c.stderr)
        assert "--out" in line, line
        assert c.after == c.before, "a refused command changed files"  # nothing written, nothing removed
        assert not (c.root / "a").exists() and not (c.root / "true").exists()
        if kind in ("run", "sidetrip", "sweep", "report"):
            assert "directory" in line and kind.replace("sidetrip", "side-trip") in line
        if kind == "same-kind-other-job":
            changed = {"train": "seed: 0 (stored) != 1 (now)", "sidetrip": "num_lrs: 3 (stored) != 4 (now)",
                       "sweep": "sweep.seed: 7 (stored) != 8 (now)", "reproduce": "mode: 'quick' (stored) != 'full'"}
            assert changed[cli] in line, line
        if kind == "unmarked-same-job":
            assert "holds no output of these tools" in line, line
        return
    assert "Traceback" not in c.stderr
    assert marker_kind(c.out) == CLIS[cli][1]
    if cli == "sidetrip":
        assert {k: v for k, v in c.after.items() if k.startswith(str(outputs["run"]))} == \
               {k: v for k, v in c.before.items() if k.startswith(str(outputs["run"]))}  # the parent run untouched
    if kind == "same-job":
        changed = {k for k in set(c.before) | set(c.after) if c.before.get(k) != c.after.get(k)}
        changed -= {str(c.out / ".lock")}  # the lock file names its last holder
        if cli in ("train", "sidetrip"):  # finished: nothing to do, nothing rewritten
            assert not changed, sorted(changed)
        elif cli == "reproduce":  # the parts and verdicts stay; config.json / report.md name this environment,
            # timings.json merges this session's records into the earlier ones (none lost)
            assert changed <= {str(c.out / n) for n in ("config.json", "report.md", "timings.json")}, sorted(changed)
        else:  # a sweep records every run (run.json, results.parquet metadata); the rows stay
            assert changed <= {str(c.out / "run.json"), str(c.out / "results.parquet")}, sorted(changed)
    if cli == "train":
        assert json.loads(c.stdout.strip().splitlines()[-1])["steps"] == 6


def test_a_refused_out_names_what_it_is(cli_results):
    line = one_line(cli_results["sidetrip-run"].stderr)
    assert "is a realnet run directory, not a realnet side-trip directory" in line
    line = one_line(cli_results["reproduce-run"].stderr)
    assert "is a realnet run directory, not a validation report directory" in line
    line = one_line(cli_results["train-file"].stderr)
    assert "is an existing file, not a directory" in line
    assert "which is a file" in one_line(cli_results["sweep-under-file"].stderr)
    assert "lies inside a realnet run directory" in one_line(cli_results["sidetrip-inside-another-output"].stderr)


def test_flags_are_not_parsed_into_nonsense(cli_results):
    for name in ("out-no-value", "out-no-value-before-flag"):
        c = cli_results[name]
        assert c.rc == 2 and "--out needs a value" in one_line(c.stderr)
        assert not (c.root / "true").exists() and c.after == c.before
    c = cli_results["eval-steps-as-help-shows"]  # `--help` shows --eval-steps=[0, 10, 100, 1000]
    assert c.rc == 0, c.stderr[-2000:]
    losses = (c.out / "divergence_losses.csv").read_text().splitlines()[1:]
    assert sorted({int(r.split(",")[0]) for r in losses}) == [0, 1, 2]
    c = cli_results["checkpoint-steps-as-list"]
    assert c.rc == 0, c.stderr[-2000:]
    assert sorted(int(p.stem[5:]) for p in (c.out / "checkpoints").glob("step_*.pt")) == [0, 1, 2, 3]


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(cli_results):
    import re

    import torch

    from realnet.checkpoint import list_checkpoints, load_checkpoint

    c = cli_results["train-diverges"]
    line = one_line(c.stderr)
    m = re.search(r"training diverged at step (\d+): train_loss = (nan|inf) \(lr = 1e\+09\)", line)
    assert c.rc == 1 and m, line
    bad = int(m.group(1))
    assert c.stdout.strip() == ""  # no JSON with NaN literals, no summary
    ck = list_checkpoints(c.out)
    assert ck and ck[-1] <= bad and f"up to checkpoint step {ck[-1]}" in line
    for s in ck:  # every checkpoint written holds finite parameters
        sd = load_checkpoint(c.out / "checkpoints" / f"step_{s:09d}.pt")["model"]
        assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())
    rows = (c.out / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(bad)) and "nan" not in "".join(rows)
    assert not (c.out / "summary.json").exists() and bad < 40
    c = cli_results["sidetrip-diverges"]
    line = one_line(c.stderr)
    assert c.rc == 1, line
    assert re.search(r"side-trip diverged at step \d+: train_loss = (nan|inf) \(lr = 1e\+09\)", line), line
    assert c.stdout.strip() == ""
    assert not c.out.exists()  # the failed side-trip's new --out was removed again
    assert c.after == c.before


def test_damaged_checkpoints_name_the_file_and_the_previous_good_step(cli_results):
    c = cli_results["sidetrip-damaged-checkpoint"]
    line = one_line(c.stderr)
    assert c.rc == 2 and "step_000000004.pt" in line and "previous good checkpoint is step 2" in line
    assert "--step 2" in line
    assert not c.out.exists()  # created for the side-trip, removed again when it failed
    c = cli_results["train-damaged-latest-checkpoint"]
    line = one_line(c.stderr)
    assert c.rc == 2 and "step_000000006.pt" in line and "previous good checkpoint is step 4" in line
    assert "mv " in line
    assert c.after == c.before  # nothing rewritten in the run


def test_reopening_a_run_removes_the_temporary_files_of_a_killed_writer(cli_results):
    c = cli_results["train-removes-stale-temps"]
    assert c.rc == 0, c.stderr[-2000:]
    assert not list(c.out.rglob("*.tmp"))
    assert {k for k in c.before if not k.endswith(".tmp")} == set(c.after) - {str(c.out / ".lock")}


def test_sidetrip_out_inside_run_and_missing_run(cli_results):
    c = cli_results["sidetrip-out-inside-its-run"]
    assert c.rc == 2 and "--out" in one_line(c.stderr) and "--run" in one_line(c.stderr)
    assert c.after == c.before
    c = cli_results["sidetrip-run-missing"]
    assert c.rc == 2 and "run directory not found" in one_line(c.stderr) and not c.out.exists()


def test_validation_checks_real_arguments_before_any_work(cli_results):
    for name, words in (("dataset-without-data-dir", "needs --data-dir"), ("run-missing", "--run"),
                        ("out-inside-run", "lies inside --run")):
        c = cli_results[name]
        assert c.rc == 2 and words in one_line(c.stderr), c.stderr
        assert c.after == c.before and not c.out.exists()


def test_only_updates_one_claim_of_the_report_and_files_are_world_readable(cli_results):
    c1, c2 = cli_results["only-first"], cli_results["only-second"]
    assert c1.rc == 0 and c2.rc == 0, c2.stderr[-2000:]
    ids = [d["id"] for d in json.loads((c2.out / "verdicts.json").read_text())]
    assert ids == ["eq13-radius-sqrt-lr", "eq20-two-point"]  # the first claim's verdict stayed
    report = (c2.out / "report.md").read_text()
    assert "`eq13-radius-sqrt-lr`" in report and "`eq20-two-point`" in report
    umask = os.umask(0)
    os.umask(umask)
    for p in c2.out.rglob("*"):
        if p.is_file():
            assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


# ================================================================================================ signals, locks
def _wait_for(cond, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended early: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_concurrent_train_is_locked_and_ctrl_c_leaves_a_resumable_run(tmp_path):
    from realnet.checkpoint import list_checkpoints

    out = tmp_path / "run"
    args = ["realnet", "train", "--out", out, *TRAIN_ARGS[:6], "--steps", "3000", *TRAIN_ARGS[8:]]
    first = subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(list_checkpoints(out)) >= 2, 120, "the first trainer's checkpoints", first)
        second = python_m(*args)  # a second trainer on the same directory
        line = one_line(second.stderr)
        assert second.returncode == 2 and str(out) in line and f"process {first.pid}" in line, line
        assert "another realnet train is writing to it" in line
        first.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 130
    line = one_line(err)
    assert "interrupted" in line and "re-run the same command to resume" in line and str(out) in line
    done = list_checkpoints(out)[-1]
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps))  # one writer: no interleaved rows
    # resumable: the same run continued (a runtime change of --steps) picks up at the last checkpoint
    r = python_m("realnet", "train", "--out", out, *TRAIN_ARGS[:6], "--steps", done + 2, *TRAIN_ARGS[8:])
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == done + 2
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == done
    steps = [int(x.split(",")[0]) for x in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(done + 2))
    # really continued with a changed runtime field: config.json follows, run_info.json records the change
    assert json.loads((out / "config.json").read_text())["steps"] == done + 2
    session = json.loads((out / "run_info.json").read_text())["sessions"][-1]
    assert session["config_changes"] == {"steps": [3000, done + 2]}


def test_killed_sidetrip_resumes_bit_identically(outputs, tmp_path):
    import realnet

    opts = dict(steps=40, record_every=1, batch_pairs=2, threads=1, progress=False)
    ref = tmp_path / "ref"
    realnet.alignment(outputs["run"], 4, ref, **opts)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "realnet", "sidetrip", "alignment", "--run", str(outputs["run"]), "--step", "4",
           "--out", str(out), "--steps", "40", "--record-every", "1", "--batch-pairs", "2", "--threads", "1",
           "--progress", "false", "--save-every-s", "0"]
    state = out / ".resume-state.pt"
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(state.exists, 120, "the first resume state", proc)
        time.sleep(0.3)  # a few more steps
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert state.exists() and not (out / "summary.json").exists(), "the side-trip was not killed midway"
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not state.exists()
    assert len(json.loads((out / "run_info.json").read_text())["resumed"]) == 1  # it resumed, it did not restart
    assert (out / "alignment.csv").read_bytes() == (ref / "alignment.csv").read_bytes()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b


def _session_processes(sid: int) -> set[int]:
    """Pids of the live (not zombie) processes of session ``sid``."""
    pids = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.add(int(d.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigkill_of_the_sweep_leaves_no_worker_behind(tmp_path):
    import tomli_w

    spec = {"sweep": {"name": "slow", "seed": 1, "kernels": ["Last"], "quantities": ["sim_loss"], "batch_size": 1},
            "params": {"lr": 0.05, "steps": 200000, "chains": 2000, "records": 4},
            "grid": {"replicate": list(range(8))}}
    path = tmp_path / "slow.toml"
    path.write_text(tomli_w.dumps(spec))
    proc = subprocess.Popen([sys.executable, "-m", "quadsgd", "sweep", str(path), "--out", str(tmp_path / "o"),
                             "--workers", "2", "--no-progress", "--no-figures"], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # the main process, its forkserver, two workers (and multiprocessing's resource tracker)
        _wait_for(lambda: len(_session_processes(proc.pid)) >= 4, 120, "the sweep's worker processes", proc)
        time.sleep(1.0)
        children = _session_processes(proc.pid) - {proc.pid}
        os.kill(proc.pid, signal.SIGKILL)  # the main process only
        proc.wait()
        deadline = time.monotonic() + 10
        while _session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _session_processes(proc.pid), f"orphans of {sorted(children)}: {_session_processes(proc.pid)}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ctrl_c_on_validation_reproduce_exits_130_and_keeps_finished_claims(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, "-m", "validation", "reproduce", "--synthetic-only", "--no-progress",
                             "--only", "eq13-radius-sqrt-lr", "eq20-two-point", "--out", str(out)], cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = out / "parts" / "eq13-radius-sqrt-lr.json"
    try:
        _wait_for(part.exists, 180, "the first finished claim", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    line = one_line(err)
    assert "interrupted" in line and "re-run the same command to resume" in line
    assert json.loads(part.read_text())["verdict"]["id"] == "eq13-radius-sqrt-lr"
    assert marker_kind(out) == "report" and not (out / "parts" / "eq20-two-point.json").exists()


# ================================================================================================ API-level rules
def test_sweep_spec_changes_are_refused_with_the_keys_named(tmp_path):
    from quadsgd.sweeps import run_spec
    from sgdtraj.outputs import OutputError

    out = tmp_path / "o"
    spec = copy.deepcopy(SPEC)
    spec["figures"] = [{"file": "a.png", "kind": "line", "x": "lr", "quantity": "stationary_loss"},
                       {"file": "b.png", "kind": "line", "x": "lr", "quantity": "stationary_loss"}]
    df = run_spec(spec, out, scheduler="serial", progress=False)
    before = snapshot(out / "results.parquet", out / "spec.toml")
    grown = copy.deepcopy(spec)
    grown["grid"]["lr"] = [0.05, 0.1, 0.2]
    with pytest.raises(OutputError, match=r"grid\.lr: \[0\.05, 0\.1\] \(stored\) != \[0\.05, 0\.1, 0\.2\] \(now\)"):
        run_spec(grown, out, scheduler="serial", progress=False)
    assert snapshot(out / "results.parquet", out / "spec.toml") == before  # no row dropped, spec.toml kept
    # only the figures changed: the same rows, the figure the spec no longer lists is removed
    fewer = copy.deepcopy(spec)
    fewer["figures"] = spec["figures"][:1]
    again = run_spec(fewer, out, scheduler="serial", progress=False)
    assert len(again) == len(df) and (out / "a.png").exists() and not (out / "b.png").exists()


def test_report_names_the_deciding_sub_check(tmp_path):
    from validation import Verdict
    from validation.report import write_report

    v = Verdict(id="fig6-two-point-half-lr", claim="c", statistic="s", value=0.2837, comparison="<", threshold=0.5)
    v.check("loss_gap", 0.6158, "<", 0.15, "relative loss gap")
    write_report(tmp_path, [v], {"mode": "quick"})
    row = next(ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.startswith("| `fig6"))
    assert "| 0.2837 | < 0.5 | **FAIL**: check `loss_gap` = 0.6158, rule < 0.15 |" in row


def test_eq13_statistic_says_what_its_value_is(tmp_path):
    from validation.synthetic import SyntheticConfig, claim_eq13

    v = claim_eq13(eval(TINY_SYNTHETIC), tmp_path)
    assert v.statistic.startswith("|s - 0.5| + h")
    assert v.value == abs(v.details["slope"] - 0.5) + v.details["ci95_half_width"]
    assert SyntheticConfig  # the config class the test sizes come from


def test_validation_shows_one_progress_bar_per_sidetrip(tmp_path, capfd):
    from validation.real import RealConfig
    from validation.reproduction import reproduce

    rc = RealConfig(steps=9, batch_size=16, lr=0.05, width=4, alignment_steps=3, eval_samples=32, threads=1,
                    device="cpu")
    v = reproduce(tmp_path / "out", synthetic=False, real_config=rc, only=["fig7-gradient-alignment"], workers=1)
    assert v[0].error is None, v[0].error
    err = capfd.readouterr().err
    steps = [r["step"] for r in v[0].details["replicates"]]  # every replicate's side-trip, one bar each
    assert steps == [5, 6, 7] and "train run" in err and "claims" in err
    assert all(f"alignment step {s}" in err for s in steps)


@pytest.mark.parametrize("name,kw", [
    ("averaging", dict(steps=6, report_steps=[1, 4], kernels=["swa", "ema:0.2", "twopoint", "npoint:3"],
                       bn_batches=2, train_eval_samples=64, val_samples=64)),
    ("divergence", dict(steps=6, record_every=1, eval_steps=[0, 3], bn_batches=2, train_eval_samples=64,
                        val_samples=64, snapshots=4, fixed_batch_every=2, pair_factors=[0.5, 0.25],
                        function_points=3, function_samples=32)),  # the eq. 13 pairs and Lemma 2's batch resume too
])
def test_interrupted_long_sidetrips_resume_bit_identically(outputs, tmp_path, monkeypatch, name, kw):
    """Interrupted in both of averaging's phases (the continued trajectory, the equivalent side-trips) and
    midway through divergence, each re-run continues from the resume state and ends with the uninterrupted
    result, bit for bit."""
    import realnet
    from realnet.sidetrips import _runner

    fn = getattr(realnet, {"averaging": "averaging_sidetrip"}.get(name, name))
    opts = dict(progress=False, threads=1, **kw)
    fn(outputs["run"], 4, tmp_path / "ref", **opts)
    real_step = _runner.Branch.sgd_step

    def result_files(d):
        out = {}
        for p in sorted(d.iterdir()):
            if p.suffix == ".csv":
                out[p.name] = p.read_bytes()
        summary = json.loads((d / "summary.json").read_text())
        summary.pop("wall_s")
        summary.pop("timing", None)  # seconds spent on parts (divergence's eq. 13 pairs): not part of the result
        return out, summary

    ref = result_files(tmp_path / "ref")
    # Ctrl-C at the stop_at-th SGD update (averaging: one in each of its two phases; divergence with its pairs
    # makes 6 updates per step: mid-step 1 and mid-step 3, after resume states were saved)
    for stop_at in (4, 12) if name == "averaging" else (9, 20):
        out = tmp_path / f"stop{stop_at}"
        calls = {"n": 0}

        def interrupted(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise KeyboardInterrupt
            return real_step(self, *a, **k)

        monkeypatch.setattr(_runner.Branch, "sgd_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            fn(outputs["run"], 4, out, save_every_s=0, **opts)
        monkeypatch.setattr(_runner.Branch, "sgd_step", real_step)
        assert (out / ".resume-state.pt").exists() and not (out / "summary.json").exists()
        fn(outputs["run"], 4, out, save_every_s=0, **opts)
        assert len(json.loads((out / "run_info.json").read_text())["resumed"]) == 1
        assert result_files(out) == ref, (name, stop_at)
