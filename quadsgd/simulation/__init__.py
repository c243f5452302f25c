r"""Fast, reproducible simulation of many independent SGD chains of the linear model, with averaging.

Model (paper Appendix A.1, eq. 15, whitened coordinates; heavy-ball momentum in PyTorch's convention):

.. math:: g_t = \Omega u_t - \xi_t,\quad \xi_t\sim\mathcal N(0, I_d),\qquad
          b_{t+1} = \beta b_t + g_t,\quad u_{t+1} = u_t - \lambda_t b_{t+1},\qquad b_0 = 0,\ u_0 = u0.

Averaged iterates (paper A.2): :math:`\hat u_t = \sum_{k\ge0}\mu_k u_{t-k}` with :math:`u_{s} = u0` for
:math:`s < 0`; EMA: :math:`e_0 = u0`, :math:`e_{t+1} = (1-a)e_t + a u_{t+1}`. The recorded loss is
:math:`\tfrac12\hat u^\top H\hat u` (``m.loss_matrix()``), averaged over chains.

* :func:`simulate` -> :class:`SimulationResult` -- ``method="step"`` (every step) or ``"exact"`` (exact Gaussian
  transitions between event times); arguments are validated (ValueError naming the parameter and its range);
  averages with finite kernels beyond ``memory_limit`` bytes are refused by the plan (:mod:`.plan`);
* :func:`record_times` -- the record times ``record_every``, ``2 * record_every``, ... <= ``steps``, and ``steps``;
* :func:`draw_normals` -- the exact normals a chain's stream produces (for the pure-numpy twins in
  :mod:`._reference`).

Reproducibility: chain c has its own xoshiro256++ stream; results for a seed are bit-identical for any number
of threads, any segmentation of the run and (diagonal omega, small dense omega) any number of other chains. The
dense BLAS path (d > ``_DENSE_NUMBA_MAX_D``) is reproducible for a given BLAS library and thread setting.
Layout of the Python and compiled layers, and how averages are tracked: ``docs/simulator.md``.
"""
from __future__ import annotations

from .api import draw_normals, record_times, simulate
from .result import SimulationResult

__all__ = ["simulate", "SimulationResult", "draw_normals", "record_times"]
