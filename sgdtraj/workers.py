"""Worker processes: their start method, and an exit when the process that started them dies.

:func:`mp_context` is the start method (forkserver where available: a clean process, never a fork of a process
that runs Numba, Dask or torch threads; spawn elsewhere); :func:`exit_with_parent` makes a worker exit when the
process that started the work dies, even by SIGKILL, so no worker is orphaned.
"""
from __future__ import annotations

import os
import sys
import time

__all__ = ["exit_with_parent", "mp_context"]


def exit_with_parent(parent: int) -> None:
    """Make this worker exit when the process ``parent`` dies, even by SIGKILL (no orphaned workers).

    Two mechanisms: Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (the kernel kills the worker when its own
    parent -- the pool's forkserver, which itself exits when the main process does -- dies), and a daemon
    thread that waits on a pidfd of ``parent`` (``os.pidfd_open``; elsewhere it polls ``os.kill(parent, 0)``
    and the parent pid twice a second) and ends the worker with ``os._exit``.
    """
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except Exception:  # noqa: BLE001 - best effort; the thread below still watches
            pass
    start_ppid = os.getppid()

    def gone() -> bool:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists but not ours (EPERM): alive
            pass
        return os.getppid() != start_ppid  # the forkserver (our parent) died: reparented

    def watch() -> None:
        fd = None
        try:
            fd = os.pidfd_open(parent)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            import select

            select.select([fd], [], [])  # readable once the process has exited
            os._exit(1)
        while not gone():
            time.sleep(0.5)
        os._exit(1)

    if gone():
        os._exit(1)
    threading.Thread(target=watch, name="sgdtraj-parent-watch", daemon=True).start()


def mp_context():
    import multiprocessing as mp

    # forkserver: workers start from a clean process (fork after Numba / Dask threads is unsafe); spawn elsewhere
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
