r"""Hessian-vector products of a network's training loss and Lanczos for its top eigenpairs.

* :class:`ParamLayout` -- the flat parameter vector :math:`\theta\in\mathbb R^P`: ``model.named_parameters()``
  with ``requires_grad`` in registration order (what ``torch.optim.SGD(model.parameters())`` updates; BatchNorm
  running statistics are buffers, never differentiated or changed), and how to cut a flat vector back;
* :class:`FlatModel` -- a private copy of a model as a function of flat parameters: ``loss(x, y, theta)``,
  ``grad(x, y, theta)``, ``hvp(x, y, v, theta, method)`` on one batch;
* :class:`SampleLoss` -- :math:`L(\theta) = n^{-1}\sum_{x\in\text{sample}}\ell(f_\theta(x), y)` (cross-entropy
  with the run's label smoothing unless ``loss_fn``) on a fixed sample, accumulated over chunks of
  ``chunk_size`` (memory of one chunk): ``value``, ``gradient``, ``hvp``, ``operator()`` for :func:`lanczos`;
* :func:`lanczos` -> :class:`LanczosResult` -- top-k eigenpairs (largest algebraic, descending) of a symmetric
  operator: full reorthogonalisation, thick restarts, convergence by relative Ritz residual;
* :func:`projected_gradients` -- :math:`V g_B` for many mini-batches, shape (n_batches, k);
* :func:`rayleigh_quotients` -- :math:`v_i^\top H_Bv_i` on fresh batches, shape (n_batches, k);
* :func:`residual_norms` -- :math:`\|Hv_i - \kappa_i v_i\|` by explicit HVPs.

``bn_mode``: ``"batch"`` (default) -- each chunk is normalised by its own statistics as in training, running
statistics neither read nor changed; the chunk is the BatchNorm batch (set ``chunk_size`` to the run's per-device
batch size, or to the run's batch with a ``plan`` that cuts it into the per-rank groups), and the Hessian estimates
:math:`E_B[\nabla^2L_B]`, the drift matrix A of eq. 14. ``"eval"`` --
eval-mode BN with the running statistics (PyHessian's convention; for comparison only). Dropout is in eval mode.
HVPs are of L only: the curvature the optimizer feels is eigenvalue + weight decay
(:func:`quadsgd.fitting.curvatures`). Autocast is always disabled; ``dtype`` casts the copy (float64 in tests).
``method``: ``"double_backward"`` (two reverse passes) or ``"func"`` (forward-over-reverse); same vector.

``plan`` (optional, of :class:`FlatModel` and :class:`SampleLoss`): an object whose ``parts(x, y, batch_stats)``
returns ``[(x_k, y_k, w_k)]``, a partition of the batch into the parts evaluated one forward pass each (``w_k`` =
part size / batch size; ``batch_stats``: True with ``bn_mode="batch"``, where each part is one BatchNorm group),
e.g. :class:`realnet.sidetrips._losses.BatchPlan` (a DDP run's per-rank groups and a memory bound). The loss,
gradient and HVP of a batch are then the sums over its parts' summed losses times the batch's scale: with eval-mode
BatchNorm the one-shot values to float rounding, with batch statistics the mean over the groups, as DDP's.

Why train-mode BN, and the numerics: ``docs/hessian-and-lanczos.md``.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from sgdtraj.arguments import check_choice, check_int, check_real, check_seed

__all__ = [
    "ParamLayout", "FlatModel", "SampleLoss", "LanczosResult", "lanczos", "projected_gradients",
    "rayleigh_quotients", "residual_norms", "BN_MODES", "HVP_METHODS",
]

BN_MODES = ("batch", "eval")
HVP_METHODS = ("double_backward", "func")


# ============================================================================ parameter layout
class ParamLayout(NamedTuple):
    """Flat layout of the trainable parameters: ``names[i]`` has ``shapes[i]`` and occupies
    ``[offsets[i], offsets[i] + numels[i])`` of the flat vector of length ``size``."""

    names: tuple
    shapes: tuple
    numels: tuple
    offsets: tuple
    size: int

    @classmethod
    def of(cls, model: nn.Module) -> "ParamLayout":
        names, shapes, numels, offsets = [], [], [], []
        off = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            names.append(name)
            shapes.append(tuple(p.shape))
            numels.append(p.numel())
            offsets.append(off)
            off += p.numel()
        if off == 0:
            raise ValueError("model has no trainable parameters (requires_grad=True)")
        return cls(tuple(names), tuple(shapes), tuple(numels), tuple(offsets), off)

    def flatten(self, model: nn.Module, dtype=None) -> torch.Tensor:
        """The model's parameters as one flat detached tensor (a copy); shape (size,)."""
        params = dict(model.named_parameters())
        out = torch.cat([params[n].detach().reshape(-1) for n in self.names])
        return out.to(dtype) if dtype is not None else out

    def unflatten(self, theta: torch.Tensor) -> dict:
        """``{name: view}`` of a flat tensor (views share its autograd graph; ``split`` keeps backward cheap)."""
        if theta.shape != (self.size,):
            raise ValueError(f"theta must have shape ({self.size},), got {tuple(theta.shape)}")
        parts = torch.split(theta, list(self.numels))
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}


def _cross_entropy_sum(label_smoothing: float):
    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out, y, reduction="sum", label_smoothing=label_smoothing)
    return loss


_JVP_READY = False


def _load_jvp_decompositions() -> None:
    """Import torch's forward-AD decompositions once, silencing the FutureWarning their import emits.

    torch (2.14) registers them lazily on the first forward-mode AD call with ``torch.jit.script``,
    which warns "torch.jit.script is deprecated"; that warning is about torch's internals, not this
    code, and would fail a test suite run with ``-W error``.
    """
    global _JVP_READY
    if _JVP_READY:
        return
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        try:
            from torch._decomp import decompositions_for_jvp  # noqa: F401
        except ImportError:  # pragma: no cover - other torch versions
            pass
    _JVP_READY = True


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # pragma: no cover - device types without autocast support
        return contextlib.nullcontext()


# ============================================================================ the model as a function
class FlatModel:
    r"""A private copy of ``model`` as a function of flat parameters, for one batch at a time.

    model: the network (not modified: it is deep-copied). bn_mode: ``"batch"`` | ``"eval"`` (module
    docstring). dtype: None (the model's) or a torch floating dtype (float64 for tests). device: None
    (the model's) or a device. loss_fn: ``loss_fn(output, target) -> sum of per-example losses``
    (default: cross-entropy with ``label_smoothing``, summed). plan: None (each batch in one pass) or how a
    batch is cut into passes (module docstring).

    Attributes: ``layout`` (:class:`ParamLayout`), ``size`` (P), ``theta0`` (the model's parameters,
    flat, in ``dtype``), ``dtype``, ``device``, ``bn_mode``, ``plan``.
    """

    def __init__(self, model: nn.Module, *, bn_mode: str = "batch", dtype: torch.dtype | None = None,
                 device=None, loss_fn: Callable | None = None, label_smoothing: float = 0.0, plan=None):
        self.bn_mode = check_choice("bn_mode", bn_mode, BN_MODES)
        label_smoothing = check_real("label_smoothing", label_smoothing, 0.0, 1.0)
        self.layout = ParamLayout.of(model)
        ref = next(p for p in model.parameters() if p.requires_grad)
        self.device = torch.device(device) if device is not None else ref.device
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise ValueError(f"dtype must be None or a floating torch dtype (torch.float32, torch.float64), "
                             f"got {dtype!r}")
        self.dtype = dtype if dtype is not None else ref.dtype
        m = copy.deepcopy(model).to(device=self.device, dtype=self.dtype)
        if self.bn_mode == "batch":
            torch.func.replace_all_batch_norm_modules_(m)
            m.train()
        else:
            m.eval()
        for mod in m.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                mod.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        self._model = m
        self.size = self.layout.size
        self.theta0 = self.layout.flatten(model, self.dtype).to(self.device)
        self._loss_fn = loss_fn if loss_fn is not None else _cross_entropy_sum(label_smoothing)
        if plan is not None and not callable(getattr(plan, "parts", None)):
            raise ValueError(f"plan must be None or have a parts(x, y, batch_stats) method; got {type(plan).__name__}")
        self.plan = plan

    # ------------------------------------------------------------------ helpers
    def _theta(self, theta) -> torch.Tensor:
        if theta is None:
            return self.theta0
        if not isinstance(theta, torch.Tensor) or theta.shape != (self.size,):
            raise ValueError(f"theta must be a tensor of shape ({self.size},), got "
                             f"{tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__}")
        return theta.to(device=self.device, dtype=self.dtype)

    def _vector(self, v) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.shape != (self.size,):
            raise ValueError(f"v must be a tensor of shape ({self.size},), got "
                             f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
        return v.to(device=self.device, dtype=self.dtype)

    def _inputs(self, x, y):
        x = x.to(self.device)
        if x.is_floating_point():
            x = x.to(self.dtype)
        return x, y.to(self.device)

    def parts(self, x, y) -> list:
        """``[(x_k, y_k)]`` on the device: the passes batch (x, y) is evaluated in (one without a ``plan``)."""
        if self.plan is None:
            return [self._inputs(x, y)]
        return [self._inputs(xk, yk) for xk, yk, _ in self.plan.parts(x, y, self.bn_mode == "batch")]

    def summed_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:math:`\\sum_{x\\in\\text{batch}}\\ell` at flat ``theta`` (differentiable in theta); x, y on the device."""
        out = functional_call(self._model, self.layout.unflatten(theta), (x,))
        return self._loss_fn(out, y)

    # ------------------------------------------------------------------ one batch
    def loss(self, x, y, theta=None, scale: float | None = None) -> torch.Tensor:
        """Mean loss on batch (x, y) (BN per ``bn_mode``); ``scale`` replaces 1/len(x). Scalar tensor."""
        s = 1.0 / len(x) if scale is None else scale
        th = self._theta(theta)
        with torch.no_grad(), _no_autocast(self.device):
            return sum(self.summed_loss(th, xk, yk) * s for xk, yk in self.parts(x, y))

    def grad(self, x, y, theta=None, scale: float | None = None) -> torch.Tensor:
        """Gradient of the mean loss on batch (x, y); shape (P,). ``scale`` replaces 1/len(x)."""
        s = 1.0 / len(x) if scale is None else scale
        th = self._theta(theta).detach().requires_grad_(True)
        acc = None
        for xk, yk in self.parts(x, y):
            with torch.enable_grad(), _no_autocast(self.device):
                (g,) = torch.autograd.grad(self.summed_loss(th, xk, yk) * s, th)
            acc = g if acc is None else acc + g
        return acc

    def hvp(self, x, y, v, theta=None, method: str = "double_backward", scale: float | None = None) -> torch.Tensor:
        r""":math:`\nabla^2 L_{batch}(\theta)\,v` of the mean loss on batch (x, y); shape (P,)."""
        check_choice("method", method, HVP_METHODS)
        s = 1.0 / len(x) if scale is None else scale
        v = self._vector(v)
        th = self._theta(theta).detach()
        acc = None
        for xk, yk in self.parts(x, y):  # one pass (and its graph) per part
            hv = self._hvp_part(xk, yk, v, th, method, s)
            acc = hv if acc is None else acc + hv
        return acc

    def _hvp_part(self, x, y, v, th, method: str, s: float) -> torch.Tensor:
        with _no_autocast(self.device):
            if method == "double_backward":
                th = th.detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = self.summed_loss(th, x, y) * s
                    (g,) = torch.autograd.grad(loss, th, create_graph=True)
                    (hv,) = torch.autograd.grad(torch.dot(g, v), th)
                return hv
            _load_jvp_decompositions()

            def f(t):
                return self.summed_loss(t, x, y) * s
            _, hv = torch.func.jvp(torch.func.grad(f), (th,), (v,))
            return hv.detach()


# ============================================================================ fixed-sample training loss
class SampleLoss:
    r"""The training loss on a fixed sample, :math:`L(\theta) = n^{-1}\sum_{c}\sum_{x\in c}\ell`, by chunks.

    model: the network (deep-copied; untouched). inputs: (n, ...) tensor; targets: (n,) tensor (kept on
    their device; each chunk is moved to the compute device). chunk_size: examples per chunk (memory
    bound; with ``bn_mode="batch"`` also the BatchNorm batch, and n must be a multiple of it). With a ``plan``
    each chunk is cut into the plan's parts (with ``bn_mode="batch"`` its BatchNorm groups), one pass each: the
    chunk is then the unit the plan cuts (the run's global batch) and the part bounds the memory.
    method: default HVP method (``"double_backward"`` | ``"func"``). Other keywords: :class:`FlatModel`.

    Attributes: ``flat`` (the :class:`FlatModel`), ``size`` (P), ``n`` (sample size), ``chunk_size``,
    ``theta0``, ``method``, ``counts`` (dict: number of gradient / HVP evaluations of the whole sample).
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, chunk_size: int = 256,
                 bn_mode: str = "batch", method: str = "double_backward", dtype: torch.dtype | None = None,
                 device=None, loss_fn: Callable | None = None, label_smoothing: float = 0.0, plan=None):
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise ValueError("inputs and targets must be tensors")
        n = len(inputs)
        if n < 1 or len(targets) != n:
            raise ValueError(f"inputs ({n}) and targets ({len(targets)}) must hold the same number (>= 1) of examples")
        self.chunk_size = check_int("chunk_size", chunk_size, 1)
        self.method = check_choice("method", method, HVP_METHODS)
        if bn_mode == "batch" and n % self.chunk_size:
            raise ValueError(
                f"sample_size ({n}) must be a multiple of chunk_size ({self.chunk_size}) with bn_mode='batch' "
                f"(each chunk is one BatchNorm batch); use sample_size = "
                f"{max(1, n // self.chunk_size) * self.chunk_size}")
        if bn_mode == "batch" and self.chunk_size == 1:
            raise ValueError("chunk_size must be >= 2 with bn_mode='batch' (BatchNorm needs > 1 example per batch)")
        self.flat = FlatModel(model, bn_mode=bn_mode, dtype=dtype, device=device, loss_fn=loss_fn,
                              label_smoothing=label_smoothing, plan=plan)
        self.inputs, self.targets, self.n = inputs, targets, n
        self.size = self.flat.size
        self.theta0 = self.flat.theta0
        self.counts = {"gradient": 0, "hvp": 0}

    @property
    def bn_mode(self) -> str:
        return self.flat.bn_mode

    def chunks(self):
        for i in range(0, self.n, self.chunk_size):
            yield self.inputs[i:i + self.chunk_size], self.targets[i:i + self.chunk_size]

    def value(self, theta=None) -> float:
        """L(theta) (default theta: the model's parameters)."""
        tot = 0.0
        for x, y in self.chunks():
            tot += float(self.flat.loss(x, y, theta, scale=1.0 / self.n))
        return tot

    def gradient(self, theta=None) -> torch.Tensor:
        """:math:`\\nabla L(\\theta)`; shape (P,)."""
        acc = torch.zeros(self.size, dtype=self.flat.dtype, device=self.flat.device)
        for x, y in self.chunks():
            acc += self.flat.grad(x, y, theta, scale=1.0 / self.n)
        self.counts["gradient"] += 1
        return acc

    def hvp(self, v, theta=None, method: str | None = None) -> torch.Tensor:
        """:math:`\\nabla^2 L(\\theta)\\,v`; shape (P,). method: None (``self.method``) or one of HVP_METHODS."""
        method = self.method if method is None else method
        acc = torch.zeros(self.size, dtype=self.flat.dtype, device=self.flat.device)
        for x, y in self.chunks():
            acc += self.flat.hvp(x, y, v, theta, method=method, scale=1.0 / self.n)
        self.counts["hvp"] += 1
        return acc

    def operator(self, theta=None, method: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v -> H v`` at ``theta`` (for :func:`lanczos`)."""
        return lambda v: self.hvp(v, theta, method)

    def batch_gradient(self, x, y, theta=None) -> torch.Tensor:
        """Gradient of the mean loss on one (fresh) batch with this loss's conventions; shape (P,)."""
        return self.flat.grad(x, y, theta)


# ============================================================================ Lanczos
class LanczosResult(NamedTuple):
    """Top-k eigenpairs of a symmetric operator.

    eigenvalues: (k,) float64, descending (largest algebraic first). eigenvectors: (k, P) tensor
    (rows, unit norm, in the operator's dtype/device; sign: largest-magnitude component positive).
    residuals: (k,) Ritz residual norms :math:`\\|Hv_i - \\kappa_i v_i\\|` (exact in exact arithmetic
    with full reorthogonalisation). converged: (k,) bool, ``residual <= tol * max|eigenvalue|``.
    matvecs: operator applications. restarts: thick restarts used. krylov_dim: basis size at the end.
    wall_s: seconds.
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    residuals: np.ndarray
    converged: np.ndarray
    matvecs: int
    restarts: int
    krylov_dim: int
    wall_s: float


def _orthogonalize(V: torch.Tensor, w: torch.Tensor, passes: int = 2):
    """w minus its projection on the rows of V (classical Gram-Schmidt, ``passes`` times); (w, coefficients)."""
    h = torch.zeros(V.shape[0], dtype=torch.float64)
    for _ in range(passes):
        c = V @ w
        w = w - c @ V
        h += c.double().cpu()
    return w, h


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], size: int, k: int = 10, *, steps: int | None = None,
            tol: float = 1e-6, max_restarts: int = 20, seed: int = 0, dtype: torch.dtype = torch.float32,
            device=None, progress: Callable[[int, np.ndarray], None] | None = None) -> LanczosResult:
    r"""Top-k eigenpairs (largest algebraic eigenvalues) of the symmetric operator ``matvec`` on R^size.

    Lanczos with full reorthogonalisation (two classical Gram-Schmidt passes against the whole basis,
    every step) and thick restarts (symmetric Krylov-Schur): the basis :math:`V_j` satisfies
    :math:`HV_j = V_jT_j + v_{j+1}b^\top`; the Ritz pairs :math:`(\theta_i, V_js_i)` of the projected
    matrix :math:`T_j` have residual norms :math:`|b^\top s_i|`. After every step with more than k basis
    vectors the top-k residuals are checked; the run stops when all are ``<= tol * max_i|theta_i|``.
    When the basis reaches ``steps`` vectors it is restarted from the top ``k + (steps - k) // 2`` Ritz
    vectors and the current residual direction (at most ``max_restarts`` times).

    matvec: ``v -> H v`` for a (size,) tensor. k: eigenpairs wanted (1 <= k <= size). steps: maximal
    basis size m (default ``min(size, max(2k + 10, 20))``; k < m <= size unless k = size). tol: relative
    residual tolerance. seed: of the Gaussian start vector (drawn in float64 on the CPU, so the same on
    every device). dtype / device: of the basis vectors. progress: optional callback
    ``progress(matvecs, top_k_residuals)`` after every step.
    Returns :class:`LanczosResult`. The basis costs ``(steps + 1) * size`` numbers of ``dtype``.
    """
    size = check_int("size", size, 1)
    k = check_int("k", k, 1)
    if k > size:
        raise ValueError(f"k = {k} eigenpairs requested but the operator has only {size} dimensions "
                         f"(the number of trainable parameters); k must be in [1, {size}]")
    if steps is None:
        steps = min(size, max(2 * k + 10, 20))
    steps = check_int("steps", steps, 1)
    if steps > size:
        steps = size
    if steps <= k and k < size:
        raise ValueError(f"steps (Lanczos basis size, {steps}) must exceed k ({k}); use steps >= {k + 1}")
    tol = check_real("tol", tol, 0.0, low_open=True)
    max_restarts = check_int("max_restarts", max_restarts, 0)
    seed = check_seed(seed, allow_none=False)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    t0 = time.perf_counter()

    gen = torch.Generator().manual_seed(seed)
    V = torch.zeros(steps + 1, size, dtype=dtype, device=dev)
    v0 = torch.randn(size, generator=gen, dtype=torch.float64)
    V[0] = (v0 / v0.norm()).to(dtype=dtype, device=dev)
    T = np.zeros((steps, steps))  # projected matrix V^T H V of the current basis
    j0 = 0  # basis vectors 0..j0-1 are kept Ritz vectors (their rows of T are already filled)
    matvecs = restarts = 0
    nb = 0

    while True:
        converged = False
        for j in range(j0, steps):
            w = matvec(V[j]).to(dtype=dtype, device=dev)
            matvecs += 1
            w, h = _orthogonalize(V[:j + 1], w)
            T[:j + 1, j] = h.numpy()
            T[j, :j + 1] = h.numpy()
            beta = float(w.norm())
            nb = j + 1
            scale = max(float(np.abs(T[:nb, :nb]).max()), 1e-300)
            if beta <= 1e-12 * scale:  # invariant subspace found
                beta = 0.0
                if nb < size:  # continue with a fresh random direction (coupling 0)
                    r = torch.randn(size, generator=gen, dtype=torch.float64).to(dtype=dtype, device=dev)
                    r, _ = _orthogonalize(V[:nb], r)
                    V[nb] = r / r.norm()
            else:
                V[nb] = w / beta
            if nb > k or nb == size:
                Tj = T[:nb, :nb]
                w_, U = np.linalg.eigh(0.5 * (Tj + Tj.T))
                order = np.argsort(w_)[::-1]
                vals, S = w_[order], U[:, order]
                res = np.abs(beta * S[nb - 1, :k])
                if progress is not None:
                    progress(matvecs, res)
                if np.all(res <= tol * max(np.abs(vals[:k]).max(), 1e-300)) or nb == size:
                    converged = True
                    break
        if converged or restarts >= max_restarts:
            break
        # thick restart: keep the top l Ritz vectors and the residual direction v_{nb}
        l = min(k + (steps - k) // 2, steps - 1)
        Sl = torch.from_numpy(np.ascontiguousarray(S[:, :l].T)).to(dtype=dtype, device=dev)  # (l, nb)
        newV = Sl @ V[:nb]
        V[l] = V[nb]
        V[:l] = newV
        c = beta * S[nb - 1, :l]
        T[:] = 0.0
        T[np.arange(l), np.arange(l)] = vals[:l]
        T[l, :l] = c
        T[:l, l] = c
        j0 = l
        restarts += 1

    Sk = torch.from_numpy(np.ascontiguousarray(S[:, :k].T)).to(dtype=dtype, device=dev)
    Y = Sk @ V[:nb]
    Y = Y / Y.norm(dim=1, keepdim=True)
    idx = Y.abs().argmax(dim=1)
    sign = torch.sign(Y[torch.arange(k, device=dev), idx])
    sign[sign == 0] = 1
    Y = Y * sign[:, None]
    top = max(np.abs(vals[:k]).max(), 1e-300)
    return LanczosResult(eigenvalues=vals[:k].copy(), eigenvectors=Y, residuals=res.copy(),
                         converged=res <= tol * top, matvecs=matvecs, restarts=restarts, krylov_dim=nb,
                         wall_s=time.perf_counter() - t0)


def residual_norms(matvec: Callable[[torch.Tensor], torch.Tensor], eigenvalues,
                   eigenvectors: torch.Tensor) -> np.ndarray:
    """:math:`\\|Hv_i - \\kappa_iv_i\\|` by explicit operator applications; shape (k,)."""
    out = []
    for lam, v in zip(np.asarray(eigenvalues, dtype=np.float64), eigenvectors):
        out.append(float((matvec(v) - lam * v).norm()))
    return np.array(out)


# ============================================================================ gradient noise
def projected_gradients(loss: SampleLoss | FlatModel, batches: Iterable, directions: torch.Tensor,
                        theta=None, progress: Callable[[int], None] | None = None) -> np.ndarray:
    r"""Projections :math:`V g_B` of mini-batch gradients on the rows of ``directions``; shape (n_batches, k).

    loss: a :class:`SampleLoss` or :class:`FlatModel` whose conventions (BN mode, loss, dtype) define the
    gradient -- use ``bn_mode="batch"`` for the gradient the optimizer sees (train-mode BatchNorm over the
    whole batch). batches: iterable of (x, y), each one optimizer batch. directions: (k, P) tensor.
    The coupled weight-decay term ``wd * theta`` of the optimizer's gradient is deterministic at fixed
    theta, so it shifts the projections by a constant and leaves their variance unchanged: it is not added.
    """
    flat = loss.flat if isinstance(loss, SampleLoss) else loss
    if not isinstance(directions, torch.Tensor) or directions.ndim != 2 or directions.shape[1] != flat.size:
        raise ValueError(f"directions must be a (k, {flat.size}) tensor")
    D = directions.to(device=flat.device, dtype=flat.dtype)
    rows = []
    for i, (x, y) in enumerate(batches):
        g = flat.grad(x, y, theta)
        rows.append((D @ g).double().cpu().numpy())
        if progress is not None:
            progress(i + 1)
    if not rows:
        raise ValueError("batches must yield at least one (x, y) batch")
    return np.stack(rows)


def rayleigh_quotients(loss: SampleLoss | FlatModel, batches: Iterable, directions: torch.Tensor, theta=None,
                       method: str = "double_backward") -> np.ndarray:
    r""":math:`v_i^\top\nabla^2L_B(\theta)v_i` for every batch B and row :math:`v_i` of ``directions``;
    shape (n_batches, k).

    Their mean over batches independent of those that chose the directions is an unbiased estimate of
    the curvature :math:`v_i^\top E_B[\nabla^2L_B]v_i`; the top eigenvalues of a finite sample's Hessian are
    biased upwards (quick digits checkpoint: ``benchmarks/results/bench_hessian_2026-12-01.json``, section
    ``bn``, batch-mode ``eigenvalues`` against ``sgd_felt_curvature``). Cost: k HVPs per batch.
    loss: :class:`SampleLoss` or :class:`FlatModel` (its BN mode and loss). batches: iterable of (x, y).
    """
    flat = loss.flat if isinstance(loss, SampleLoss) else loss
    if not isinstance(directions, torch.Tensor) or directions.ndim != 2 or directions.shape[1] != flat.size:
        raise ValueError(f"directions must be a (k, {flat.size}) tensor")
    D = directions.to(device=flat.device, dtype=flat.dtype)
    rows = []
    for x, y in batches:
        rows.append([float(v @ flat.hvp(x, y, v, theta, method=method)) for v in D])
    if not rows:
        raise ValueError("batches must yield at least one (x, y) batch")
    return np.array(rows, dtype=np.float64)
