r"""Small shared numerics: arithmetic on scalars *or* stacks of small matrices, doubling recurrences,
and the transition object that averaging kernels evaluate their generating function on.

Nothing here knows about a concrete kernel or model; :mod:`quadsgd.kernels` and :mod:`quadsgd.theory`
build on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Ops", "Transition", "triangular_geometric"]


class Ops:
    """Arithmetic on either elementwise scalars (any shape) or stacks of square matrices (..., s, s)."""

    def __init__(self, like: np.ndarray, matrix: bool):
        self.matrix = matrix
        if matrix:
            s = like.shape[-1]
            self.I = np.broadcast_to(np.eye(s, dtype=like.dtype), like.shape)
        else:
            self.I = np.ones_like(like)

    def mul(self, a, b):
        if not self.matrix:
            return a * b
        if a.shape[-1] == 2 and a.ndim > 2:
            # stacks of 2x2 matrices: explicit products beat np.matmul's per-matrix loop (measured speed-up:
            # benchmarks/results/2026-12-07-numbers-from-docstrings.md)
            out = np.empty(np.broadcast_shapes(a.shape, b.shape), dtype=np.result_type(a, b))
            a00, a01, a10, a11 = a[..., 0, 0], a[..., 0, 1], a[..., 1, 0], a[..., 1, 1]
            b00, b01, b10, b11 = b[..., 0, 0], b[..., 0, 1], b[..., 1, 0], b[..., 1, 1]
            out[..., 0, 0] = a00 * b00 + a01 * b10
            out[..., 0, 1] = a00 * b01 + a01 * b11
            out[..., 1, 0] = a10 * b00 + a11 * b10
            out[..., 1, 1] = a10 * b01 + a11 * b11
            return out
        return a @ b

    def inv_solve(self, a, b):
        """a^-1 b."""
        return np.linalg.solve(a, b) if self.matrix else b / a

    def power(self, x, n: int):
        """x**n by binary exponentiation (n >= 0)."""
        result = self.I.copy()
        base = x
        while n > 0:
            if n & 1:
                result = self.mul(result, base)
            n >>= 1
            if n:
                base = self.mul(base, base)
        return result


def triangular_geometric(h, N: int, ops: Ops):
    r""":math:`T_N(h) = \sum_{k=0}^{N-1}(N-k)h^k` by doubling (all terms added: no cancellation near h = 1).

    Recurrences (all terms are polynomials in h, so they commute):
    :math:`T_{2N} = T_N + N G_N + h^N T_N`, :math:`G_{2N} = (I + h^N) G_N`,
    :math:`G_{N+1} = I + hG_N`, :math:`T_{N+1} = T_N + G_{N+1}`, with :math:`G_N = \sum_{k<N} h^k`.
    Cost: O(log N) products.
    """
    T = np.zeros_like(ops.I)
    G = np.zeros_like(ops.I)
    P = ops.I.copy()
    n = 0
    for bit in (bin(N)[2:] if N > 0 else ""):
        if n:
            T = T + float(n) * G + ops.mul(P, T)
            G = G + ops.mul(P, G)
            P = ops.mul(P, P)
            n *= 2
        if bit == "1":
            G = ops.I + ops.mul(h, G)
            T = T + G
            P = ops.mul(h, P)
            n += 1
    return T


@dataclass(frozen=True)
class Transition:
    r"""A transition :math:`M` (scalars or a stack of matrices) on which a kernel's generating function
    :math:`\Psi(M)` is evaluated (:meth:`quadsgd.kernels.AveragingKernel.psi`).

    M: the transition. ops: :class:`Ops` for its kind. I_minus_M: :math:`I - M` computed without
    cancellation (e.g. :math:`\lambda\Omega` for SGD), or None. shifted_inverse: optional callable
    ``a -> (I - (1-a)M)^{-1}`` known in a cancellation-free closed form (e.g. the adjugate of the
    heavy-ball companion matrix); without it :meth:`solve_shifted` solves with ``I_minus_M + a M``.
    I_plus_M: :math:`I + M` computed without cancellation, or None -- given (for real scalars) by the
    stationary theory's eigen-root path at the fast stability edge, where :math:`M \to -1` and kernels
    that average the alternating mode away need :math:`1 + M` to full relative precision
    (:meth:`quadsgd.kernels.AveragingKernel.psi` of SWA, NPoint, TwoPoint, EMA use it there).
    """

    M: np.ndarray
    ops: Ops
    I_minus_M: np.ndarray | None = None
    shifted_inverse: Callable[[float], np.ndarray] | None = None
    I_plus_M: np.ndarray | None = None

    @classmethod
    def scalars(cls, g) -> "Transition":
        """Elementwise scalar transitions ``g`` (real or complex array), with ``1 - g`` as given."""
        return cls(g, Ops(g, matrix=False), I_minus_M=1.0 - g)

    @property
    def I(self):
        return self.ops.I

    def mul(self, a, b):
        return self.ops.mul(a, b)

    def power(self, n: int):
        """:math:`M^n`."""
        return self.ops.power(self.M, n)

    def solve_shifted(self, a: float, B):
        r""":math:`B\,(I - (1-a)M)^{-1}` (= :math:`(I-(1-a)M)^{-1}B` for B a function of M), cancellation-free."""
        if self.shifted_inverse is not None:
            return self.ops.mul(B, self.shifted_inverse(a))
        I_minus_M = self.I_minus_M if self.I_minus_M is not None else self.ops.I - self.M
        return self.ops.inv_solve(I_minus_M + a * self.M, B)
