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

The results directory, the point ids and the seeds are described in :mod:`quadsgd.sweeps.engine`.

``quadsgd.sweep`` is the function :func:`sweep` (re-exported); this package is ``quadsgd.sweeps``.
"""
from __future__ import annotations

from .designs import expand_grid, point_id, point_seed, product_design, random_design
from .engine import SweepError, sweep
from .figures import draw_figures
from .spec import Spec, SpecError, load_spec, run_spec

__all__ = [
    "sweep", "run_spec", "load_spec", "Spec", "expand_grid", "random_design", "product_design",
    "point_id", "point_seed", "draw_figures", "SweepError", "SpecError",
]
