r"""Fast, reproducible simulation of many independent SGD chains of the linear model, with averaging.

Model (paper Appendix A.1, eq. 15, whitened coordinates; heavy-ball momentum in PyTorch's convention):

.. math:: g_t = \Omega u_t - \xi_t,\quad \xi_t\sim\mathcal N(0, I_d),\qquad
          b_{t+1} = \beta b_t + g_t,\quad u_{t+1} = u_t - \lambda_t b_{t+1},\qquad b_0 = 0,\ u_0 = u0.

Averaged iterates (paper A.2): :math:`\hat u_t = \sum_{k\ge0}\mu_k u_{t-k}` with :math:`u_{s} = u0` for
:math:`s < 0` (the chain "sat at u0" before it started); EMA: :math:`e_0 = u0`,
:math:`e_{t+1} = (1-a)e_t + a u_{t+1}`. The recorded loss is :math:`\tfrac12\hat u^\top H\hat u`
(``m.loss_matrix()``), averaged over chains.

Entry point: :func:`simulate` (-> :class:`SimulationResult`). :func:`draw_normals` gives the exact
normals a chain's stream produces, for feeding the pure-numpy twins in :mod:`._reference`.

Layout
------
Python layer (validation, planning, segmentation; typed state, no dicts):

* :mod:`.api` -- :func:`simulate`: arguments validated (:mod:`sgdtraj.arguments`) into a frozen
  :class:`~.simconfig.SimConfig`, dispatched to a runner; :func:`record_times`, :func:`draw_normals`;
* :mod:`.result` -- :class:`SimulationResult`;
* :mod:`.plan` -- the kernel plan built from each kernel's ``tracking()`` (never its class): Numba type
  codes, accumulator slots, event lists; how averages are tracked without a history, and their memory;
* :mod:`.runtime` -- the run object :class:`~.runtime.Job` and the output arrays
  :class:`~.runtime.RunOutputs` shared by the runners;
* :mod:`.step` -- ``method="step"`` (every step; diagonal, small dense and BLAS paths);
* :mod:`.exact` -- ``method="exact"`` (exact Gaussian transitions between event times):
  :func:`k_step_transition`, :func:`sqrt_psd`, :func:`exact_schedule`, :func:`exact_transitions`
  (:func:`one_step_matrices` is :func:`quadsgd._heavy_ball.one_step_matrices`).

Compiled layer (Numba; nothing validates input; related arrays passed as NamedTuples):

* :mod:`._jit` -- the compile options (one decorator per kind), the shared argument groups
  ``Records`` and ``Outputs``, the reduction over chains;
* :mod:`._rng` -- xoshiro256++, SplitMix64 seeding, jump streams, ziggurat normals;
* :mod:`._step` -- the step loops (``State``, ``Model``, ``Recursion``, ``Events``);
* :mod:`._exact` -- the exact-transition loop for diagonal omega (``ExactState``, ``Transitions``,
  ``ExactEvents``).

Tests only: :mod:`._reference` -- pure-numpy twins that compute the averages by their definition from
a stored history (no shared bookkeeping with the compiled loops).

Reproducibility
---------------
Chain c uses its own xoshiro256++ stream (:mod:`._rng`): results for a seed are bit-identical for any
number of threads (``NUMBA_NUM_THREADS``), any segmentation of the run (progress bar), and for diagonal
omega and the small-d dense path, for any number of other chains. The dense BLAS path
(d > ``_DENSE_NUMBA_MAX_D``) is reproducible for a given BLAS library and thread setting.
"""
from __future__ import annotations

from .api import SimConfig, draw_normals, record_times, simulate
from .exact import exact_schedule, exact_transitions, k_step_transition, one_step_matrices, sqrt_psd
from .plan import Plan, SlotSpec, make_plan
from .result import SimulationResult

__all__ = ["simulate", "SimulationResult", "draw_normals", "record_times"]
