r"""Parameter sweeps: grid or random designs, computed in parallel, collected as one tidy table, resumable.

:func:`sweep` is the engine: ``sweep(fn, grid, executor)`` calls ``fn(**point)`` for every point of
``grid`` on an executor (default: a local process pool; any ``concurrent.futures``-style executor;
a Dask ``distributed.Client`` as is) and returns a :class:`pandas.DataFrame` with one row per point x
output and the parameters as columns. :func:`run_spec` runs a TOML spec of the built-in quantities and
draws its figures; ``python -m quadsgd sweep SPEC.toml --out DIR`` is its command line.

Layout of the package
---------------------
=========================== ===================================================================================
module                      contents
=========================== ===================================================================================
:mod:`.designs`             :func:`expand_grid`, :func:`product_design`, :func:`random_design`; the canonical
                            form of a point: :func:`point_id`, :func:`point_seed`, labels
:mod:`.engine`              :func:`sweep`: executors (local pool, serial, concurrent.futures, Dask), batching,
                            resume, the ``run.json`` record (:class:`SweepError`)
:mod:`.store`               the resumable Parquet store of a results directory and its lock
:mod:`.quantities`          the parameter schema ``PARAMS``, kernels by name (from the kernel registry), the
                            quantity registry ``QUANTITIES`` and the point function ``SpecFunction``
:mod:`.figures`             plotting functions taking an ``ax``, the figure kinds ``FIGURES``, :func:`draw_figures`
:mod:`.spec`                spec files: :class:`Spec`, :func:`load_spec`, :func:`run_spec` (:class:`SpecError`)
=========================== ===================================================================================

The results directory, the point ids and the seeds are described in :mod:`quadsgd.sweep.engine`.

Note: ``quadsgd.sweep`` the attribute of :mod:`quadsgd` is the function :func:`sweep`; reach the
modules with ``from quadsgd.sweep import quantities`` or ``from quadsgd.sweep.quantities import PARAMS``.
"""
from __future__ import annotations

from .._files import environment as environment_info
from . import designs, engine, figures, quantities, spec, store  # noqa: F401  (every module, for `from quadsgd.sweep import m`)
from .designs import expand_grid, point_id, point_seed, product_design, random_design
from .engine import SweepError, _init_worker, _mp_context, sweep
from .figures import draw_figures
from .spec import Spec, SpecError, load_spec, run_spec
from .store import Store as _Store

__all__ = [
    "sweep", "run_spec", "load_spec", "Spec", "expand_grid", "random_design", "product_design",
    "point_id", "point_seed", "draw_figures", "environment_info", "SweepError", "SpecError",
]
