"""One error / exit-code rule for every command line of the project.

:func:`run_command` runs a command's body with SIGTERM turned into KeyboardInterrupt (so ``finally`` blocks
and saved state behave as for Ctrl-C) and maps what escapes to an exit status with one line on stderr:
the first matching entry of ``errors`` (e.g. bad input -> 2, a failed computation or file -> 1), 130 when
interrupted (with the command's own message, e.g. how to resume). With the environment variable named by
``debug_env`` set, exceptions propagate with their traceback instead.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Sequence

__all__ = ["run_command", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _terminate(signum, frame):
    raise KeyboardInterrupt


def run_command(body: Callable[[], int | None], *,
                errors: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], int]],
                prefix: str = "error: ", interrupted: str | Callable[[], str] = "interrupted",
                debug_env: str | None = None) -> int:
    """``body()``'s exit status (None -> 0); an exception of ``errors`` -> its code and ``prefix + message``
    on stderr; KeyboardInterrupt or SIGTERM -> 130 and ``interrupted`` (a string or a function giving one)."""
    debug = bool(debug_env and os.environ.get(debug_env))
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(interrupted() if callable(interrupted) else interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as e:
        for types, code in errors:
            if isinstance(e, types) and not debug:
                print(f"{prefix}{e}", file=sys.stderr)
                return code
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
