"""sgdtraj, the plumbing: output kinds registered by their owners, the process umask left alone, the Stopwatch,
the one exit-code rule of the command lines, argument checks raising the caller's error class."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sgdtraj import arguments
from sgdtraj.commands import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, run_command
from sgdtraj.outputs import KINDS, OutputError, claim_output, register_kind
from sgdtraj.timing import Stopwatch


def test_importing_the_plumbing_leaves_the_umask_alone():
    code = ("import os; os.umask(0o077); import sgdtraj.files, sgdtraj.outputs, sgdtraj.provenance; "
            "from sgdtraj.files import atomic_write_text; import pathlib, sys; "
            "p = atomic_write_text(pathlib.Path(sys.argv[1]) / 'f.txt', 'x'); "
            "print(oct(os.umask(0)), oct(p.stat().st_mode & 0o777))")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", code, d], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0o77", "0o600"]  # the process's own umask kept, and honoured by the atomic write


def test_kinds_are_registered_by_their_owners(tmp_path):
    assert register_kind("test-kind", "a test output") == "test-kind" and KINDS["test-kind"] == "a test output"
    register_kind("test-kind", "a test output")  # the same twice: fine
    with pytest.raises(ValueError, match="registered already"):
        register_kind("test-kind", "something else")
    with pytest.raises(ValueError, match="kind must be a registered output kind"):
        claim_output(tmp_path / "x", "never-registered")
    with claim_output(tmp_path / "a", "test-kind", {"n": 1}) as c:
        assert c.fresh
    # the marker names its kind in words, so a process that never registered the kind still names it
    register_kind("other-kind", "another output")
    with pytest.raises(OutputError, match="is a test output directory, not another output directory"):
        claim_output(tmp_path / "a", "other-kind", {"n": 1})
    # files without a marker are never written into
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{}")
    with pytest.raises(OutputError, match="holds no output of these tools"):
        claim_output(tmp_path / "b", "test-kind", {"n": 1})


def test_stopwatch_accumulates_phases_and_round_trips():
    sw = Stopwatch()
    for _ in range(3):
        with sw.phase("a"):
            time.sleep(0.01)
    with pytest.raises(RuntimeError):
        with sw.phase("b"):
            raise RuntimeError("timed anyway")
    assert sw.phases["a"].calls == 3 and sw.wall("a") >= 0.03 and sw.phases["b"].calls == 1
    assert sw.wall("missing") == 0.0 and list(sw.as_dict()) == ["a", "b"]
    back = Stopwatch.from_dict(sw.as_dict())
    assert back.as_dict() == sw.as_dict() and back.total_wall_s == pytest.approx(sw.total_wall_s)


class _Bad(ValueError):
    pass


def test_run_command_maps_errors_to_exit_codes(capsys, monkeypatch):
    errors = [(_Bad, EXIT_USAGE), (OSError, EXIT_FAILED)]
    assert run_command(lambda: None, errors=errors) == 0
    assert run_command(lambda: 7, errors=errors) == 7

    def raise_(e):
        def f():
            raise e
        return f

    assert run_command(raise_(_Bad("bad --x")), errors=errors, prefix="tool: error: ") == EXIT_USAGE
    assert capsys.readouterr().err == "tool: error: bad --x\n"
    assert run_command(raise_(OSError("disk full")), errors=errors) == EXIT_FAILED
    assert run_command(raise_(KeyboardInterrupt()), errors=errors, interrupted=lambda: "stopped; re-run") == \
        EXIT_INTERRUPTED
    assert capsys.readouterr().err.endswith("stopped; re-run\n")
    with pytest.raises(ZeroDivisionError):  # not listed: a real bug keeps its traceback
        run_command(raise_(ZeroDivisionError()), errors=errors)
    monkeypatch.setenv("TOOL_DEBUG", "1")
    with pytest.raises(_Bad):
        run_command(raise_(_Bad("x")), errors=errors, debug_env="TOOL_DEBUG")


def test_run_command_turns_sigterm_into_an_interrupt(capsys):
    def body():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    before = signal.getsignal(signal.SIGTERM)
    assert run_command(body, errors=[], interrupted="terminated") == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGTERM) is before and "terminated" in capsys.readouterr().err


class _ConfigError(ValueError):
    pass


@pytest.mark.parametrize("check, args", [
    (arguments.check_int, ("n", 0, 1)), (arguments.check_real, ("lr", -1.0, 0.0)),
    (arguments.check_choice, ("mode", "x", ("a", "b"))), (arguments.check_bool, ("flag", 1)),
    (arguments.check_array, ("x", "text")), (arguments.check_seed, (-1,)),
])
def test_argument_checks_raise_the_callers_error_class(check, args):
    with pytest.raises(ValueError) as plain:
        check(*args)
    with pytest.raises(_ConfigError) as own:
        check(*args, error=_ConfigError)
    assert type(plain.value) is ValueError and str(own.value) == str(plain.value)
