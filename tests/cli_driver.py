"""Run many command lines of one CLI, each in its own process, paying for the imports once.

``python tests/cli_driver.py < job.json`` where ``job.json`` is ``{"module": "realnet", "setup": "python code",
"cases": [{"argv": [...], "cwd": DIR, "stdout": FILE, "stderr": FILE}, ...]}``. The driver puts this checkout first
on ``sys.path``, runs ``setup`` (imports, and test-only size patches such as tiny synthetic claims), then for each
case forks a child that changes to ``cwd``, sends its stdout / stderr to the files and runs the module exactly as
``python -m MODULE ARGV...`` would (``runpy.run_module(..., run_name="__main__")``; an uncaught exception prints
its traceback and exits 1, like the interpreter). The parent waits for each child and prints the exit codes as a
JSON list. Used by tests/test_cli.py for the matrix of ``--out`` kinds (a fresh interpreter per case would spend
most of the test's time importing torch and numba).
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(module: str, case: dict) -> int:
    out = os.open(case["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.chdir(case["cwd"])
    sys.argv = [module, *case["argv"]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        return 1


def main() -> None:
    job = json.load(sys.stdin)
    sys.path.insert(0, REPO)
    exec(job.get("setup", ""), {"__name__": "cli_driver_setup"})
    codes = []
    for case in job["cases"]:
        t0 = time.perf_counter()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(job["module"], case)
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
        print(f"{time.perf_counter() - t0:7.2f} s  rc {codes[-1]}  {' '.join(case['argv'])[:150]}", file=sys.stderr)
    print(json.dumps(codes))


if __name__ == "__main__":
    main()
