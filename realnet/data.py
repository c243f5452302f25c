"""Data: fixed train / held-out / validation splits and a deterministic, seedable batch order.

Data sets (``TrainConfig.dataset``):

* ``digits`` (default, embedded): scikit-learn's bundled ``load_digits`` (1,797 real 8x8 digits, no
  download). Fixed stratified split: validation 300, held-out ``heldout_size`` (default 300), train the
  rest (1,197). Images are scaled to [0, 1], upsampled to ``image_size`` (nearest neighbour for
  multiples of 8, else bilinear), normalised with the training mean/std and repeated to 3 channels.
  Kept in memory as tensors. With ``augment_strength > 0`` (and ``augment``) the training stream and the
  held-out batches get :class:`DigitsAugment` (per-sample random affine + elastic distortion + pixel
  noise, applied to the [0, 1] image before normalisation); the validation split is never augmented.
* ``cifar10`` / ``cifar100``: torchvision format under ``data_dir`` (``cifar-10-batches-py/`` or
  ``cifar-100-python/``), ``download=False``. Held-out = a fixed subset of the official training set,
  validation = the official test set. Training batches: random crop (pad 4) + horizontal flip.
* ``imagenet``: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (torchvision ``ImageFolder``
  layout; with a ``meta.bin`` present, ``torchvision.datasets.ImageNet``'s file list is used). Held-out = a
  fixed subset of the training folder; validation = ``val``. Read by :mod:`realnet.pipeline` (uint8 decode
  and views in persistent workers, normalised on the device): training RandomResizedCrop + flip from the
  sample seed; evaluation resize to 256/224 of ``image_size`` + centre crop. Unreadable images are refused.

Batch order (:class:`BatchOrder`): epoch ``e`` is ``torch.randperm(n)`` from a CPU generator seeded with
``SeedSequence([data_seed, e])``; the batch at step ``t`` is slot ``t % steps_per_epoch`` of epoch
``t // steps_per_epoch`` (last partial batch dropped). Random augmentation of sample ``j`` of step ``t``
is seeded from ``SeedSequence([data_seed, 1, t])``, so a batch is a pure function of
``(data_seed, t)``: resuming and branching at any step reproduce it exactly. Under DDP rank ``r`` of
``w`` takes positions ``r, r+w, ...`` of the global batch. Fixed batches (:meth:`DataBundle.fixed_batches`)
seed sample ``j`` of batch ``i`` from ``SeedSequence([seed, 2, i])``: the same augmented images every time.

Digits augmentation (:class:`DigitsAugment`) is computed on the whole batch with torch ops: per-sample
parameters come from one CPU ``torch.Generator`` per sample seeded with its sample seed (so a sample's
augmentation does not depend on the rest of the batch, bit for bit on the CPU), then one ``affine_grid``
+ an elastic displacement (white noise smoothed by a separable Gaussian, two batched banded matmuls) +
one bilinear ``grid_sample`` for the batch: about 3% of a ResNet-20 training step at batch 32.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .pipeline import ImageFolderSplit

__all__ = ["BatchOrder", "TensorSplit", "FileSplit", "DataBundle", "DigitsAugment", "build_data",
           "digits_split_indices", "DIGITS_VAL_SIZE"]

DIGITS_VAL_SIZE = 300
_CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
_CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _seed_words(*entropy: int, n: int = 1) -> np.ndarray:
    return np.random.SeedSequence([int(e) for e in entropy]).generate_state(n, np.uint64)


class BatchOrder:
    """Deterministic infinite sequence of training batches over ``n`` examples (see module docstring).

    n: number of training examples. batch_size: global batch size (<= n). seed: data seed (>= 0).
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if not (1 <= int(batch_size) <= int(n)):
            raise ValueError(f"batch_size must be in [1, {n}] (the training split has {n} examples); got {batch_size}")
        if int(seed) < 0:
            raise ValueError(f"data seed must be >= 0; got {seed}")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.steps_per_epoch = self.n // self.batch_size
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(int(_seed_words(self.seed, epoch)[0] >> np.uint64(1)))
            self._perm = torch.randperm(self.n, generator=g)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """Indices (into the training split) of the batch used by update ``step``; shape (batch_size,)."""
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}")
        epoch, slot = divmod(int(step), self.steps_per_epoch)
        b = self.batch_size
        return self.permutation(epoch)[slot * b:(slot + 1) * b].clone()

    def sample_seeds(self, step: int) -> list[int]:
        """Per-example augmentation seeds of the batch at ``step``; length batch_size."""
        return [int(s >> np.uint64(1)) for s in _seed_words(self.seed, 1, int(step), n=self.batch_size)]

    def state(self, step: int) -> dict[str, int]:
        """Position in the batch order before update ``step`` (stored in checkpoints)."""
        epoch, slot = divmod(int(step), self.steps_per_epoch)
        return {"seed": self.seed, "n": self.n, "batch_size": self.batch_size,
                "steps_per_epoch": self.steps_per_epoch, "epoch": epoch, "position": slot, "next_step": int(step)}


def _as_index(idx) -> torch.Tensor:
    return torch.as_tensor(idx, dtype=torch.long)


@functools.lru_cache(maxsize=16)
def _gaussian_band(sigma: float, size: int) -> tuple[torch.Tensor, int, float]:
    r = max(1, int(math.ceil(3.0 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = k / k.sum()
    m = torch.zeros(size, size + 2 * r, dtype=torch.float64)
    for i in range(size):
        m[i, i:i + 2 * r + 1] = k
    return m.float(), r, float((k * k).sum())


@dataclass(frozen=True)
class DigitsAugment:
    """Per-sample random distortion of single-channel images in [0, 1] (background 0); every magnitude is
    multiplied by ``strength``.

    For sample ``j`` a CPU ``torch.Generator`` seeded with its seed ``s_j`` draws one standard-normal
    vector, split in this order into ``u = erf(. / sqrt 2) ~ U(-1, 1)^5`` (rotation, log-scale, shear,
    x/y translation), a white-noise field ``z ~ N(0, 1)^(2, H+2r, W+2r)`` and pixel noise
    ``n ~ N(0, 1)^(1, H, W)``. The output pixel at
    normalised position ``p`` (``[-1, 1]^2``, ``align_corners=False``) samples the input bilinearly at

        q = R(a) Sh(h) c p + t + e(p),     a = rot u0,  c = exp(log_scale u1),  h = shear u2,
                                           t = translate (u3, u4) / 4,
        e = elastic / 4 * (G_sigma * z) / ||G_sigma||_2        (rms displacement ``elastic`` source pixels)

    (zeros outside the image), and ``noise * n`` is added. Lengths are in *source* pixels (the 8x8 digits
    grid: 1 source pixel = 1/4 of the normalised unit at any ``image_size``); ``G_sigma`` is a separable
    Gaussian of std ``elastic_sigma`` source pixels, ``r`` its radius (valid convolution, no border effect).

    Shapes: ``x`` (B, 1, H, W) float32, ``seeds`` B ints; returns (B, 1, H, W).
    """

    strength: float = 1.0
    rotate_deg: float = 12.0  # max |rotation|
    log_scale: float = 0.12  # max |log zoom|
    shear_deg: float = 10.0  # max |shear angle|
    translate: float = 1.0  # max |shift| per axis, source pixels
    elastic: float = 0.6  # rms elastic displacement, source pixels
    elastic_sigma: float = 1.5  # smoothness of the elastic field, source pixels
    noise: float = 0.1  # std of additive Gaussian pixel noise (image range [0, 1])

    def __post_init__(self):
        for name in ("strength", "rotate_deg", "log_scale", "shear_deg", "translate", "elastic", "noise"):
            v = float(getattr(self, name))
            if not (0.0 <= v < float("inf")):
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
        if not (0.0 < float(self.elastic_sigma) < float("inf")):
            raise ValueError(f"elastic_sigma must be a finite number > 0; got {self.elastic_sigma!r}")

    def _smoother(self, size: int) -> tuple[torch.Tensor, int, float]:
        """Banded (H, H+2r) matrix of the valid 1-D Gaussian convolution, its radius r, and
        ||G_sigma||_2 = sum k^2 of the 2-D kernel (the std of G_sigma * white noise)."""
        return _gaussian_band(float(self.elastic_sigma) * size / 8.0, size)

    def draws(self, seeds: Sequence[int], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The per-sample random numbers: ``u`` (B, 5) uniform on (-1, 1), ``z`` (B, 2, H+2r, H+2r) and
        ``n`` (B, 1, H, H) standard normal. Sample ``j``: one ``torch.randn`` of 5 + 2 (H+2r)^2 + H^2
        values from a CPU generator seeded with ``seeds[j]``; ``u = erf(first five / sqrt 2)``."""
        _, r, _ = self._smoother(size)
        B, L = len(seeds), size + 2 * r
        buf = torch.empty(B, 5 + 2 * L * L + size * size)
        g = torch.Generator()
        for j, sd in enumerate(seeds):
            g.manual_seed(int(sd))
            torch.randn(buf.shape[1], generator=g, out=buf[j])
        u = torch.erf(buf[:, :5] * (0.5 ** 0.5))
        z = buf[:, 5:5 + 2 * L * L].view(B, 2, L, L)
        n = buf[:, 5 + 2 * L * L:].view(B, 1, size, size)
        return u, z, n

    def __call__(self, x: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        B, C, H, W = x.shape
        if len(seeds) != B:
            raise ValueError(f"seeds must have one entry per sample ({B}); got {len(seeds)}")
        if H != W:
            raise ValueError(f"DigitsAugment needs square images; got {H}x{W}")
        s = float(self.strength)
        if s == 0.0 or B == 0:
            return x
        u, z, n = self.draws(seeds, H)
        a = u[:, 0] * math.radians(self.rotate_deg * s)
        c = torch.exp(u[:, 1] * (self.log_scale * s))
        h = torch.tan(u[:, 2] * math.radians(self.shear_deg * s))
        cos, sin = torch.cos(a), torch.sin(a)
        theta = torch.empty(B, 2, 3)
        # R(a) @ [[1, h], [0, 1]] * c, then the shift
        theta[:, 0, 0], theta[:, 0, 1] = c * cos, c * (cos * h - sin)
        theta[:, 1, 0], theta[:, 1, 1] = c * sin, c * (sin * h + cos)
        theta[:, :, 2] = u[:, 3:5] * (self.translate * s / 4.0)
        grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)  # (B, H, W, 2): (x, y) per pixel
        if self.elastic > 0:
            m, _, gnorm = self._smoother(H)
            e = m @ z @ m.T  # (B, 2, H, W): separable valid Gaussian convolution of the white noise
            grid = grid + e.permute(0, 2, 3, 1) * (self.elastic * s / 4.0 / gnorm)
        dev = x.device
        out = F.grid_sample(x, grid.to(dev), mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.noise > 0:
            out = out + (self.noise * s) * n.to(dev)
        return out


class TensorSplit:
    """An in-memory split: ``x`` (N, 3, H, W) float32, ``y`` (N,) int64.

    With ``augment`` (a :class:`DigitsAugment`), ``raw`` (N, 1, H, W) holds the images before
    normalisation and ``norm`` = (mean, std): an augmented batch is ``(augment(raw[i], seeds) - mean) / std``
    repeated to 3 channels; unaugmented batches are ``x[i]`` (bit-identical to a split without ``augment``).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, raw: torch.Tensor | None = None,
                 augment: DigitsAugment | None = None, norm: tuple[torch.Tensor, torch.Tensor] | None = None):
        if len(x) != len(y):
            raise ValueError("x and y must have the same length")
        if augment is not None and (raw is None or norm is None or len(raw) != len(x)):
            raise ValueError("an augmented TensorSplit needs raw images (one per example) and norm=(mean, std)")
        self.x, self.y, self.raw, self.augment, self.norm = x, y, raw, augment, norm

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "TensorSplit":
        if self.augment is None:
            return TensorSplit(self.x.to(device), self.y.to(device))
        return TensorSplit(self.x.to(device), self.y.to(device), self.raw.to(device), self.augment,
                           (self.norm[0].to(device), self.norm[1].to(device)))

    def augmented(self, idx, seeds: Sequence[int]) -> torch.Tensor:
        """Augmented, normalised examples ``idx`` with per-sample ``seeds``; (len(idx), 3, H, W)."""
        i = _as_index(idx).to(self.raw.device)
        mean, std = self.norm
        return ((self.augment(self.raw[i], list(seeds)) - mean) / std).expand(-1, 3, -1, -1).contiguous()

    def iterate(self, batches: Iterable[tuple[Any, Sequence[int] | None]], train: bool, device,
                num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx, seeds in batches:
            i = _as_index(idx).to(self.x.device)
            if train and self.augment is not None and seeds is not None:
                x = self.augmented(i, seeds)
            else:
                x = self.x[i]
            yield x.to(device, non_blocking=True), self.y[i].to(device, non_blocking=True)


class _SeededItems(torch.utils.data.Dataset):
    """Map ``(position, seed, train)`` keys to transformed examples of ``base[indices[position]]``."""

    def __init__(self, base, indices: np.ndarray, train_tf, eval_tf):
        self.base, self.indices, self.train_tf, self.eval_tf = base, indices, train_tf, eval_tf

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        pos, seed, train = key
        img, target = self.base[int(self.indices[pos])]
        if train and self.train_tf is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = self.train_tf(img)
        else:
            x = self.eval_tf(img)
        return x, int(target)


class _KeyBatches:
    def __init__(self, batches, train: bool):
        self.batches, self.train = batches, train

    def __iter__(self):
        for idx, seeds in self.batches:
            idx = _as_index(idx).tolist()
            seeds = seeds if seeds is not None else [0] * len(idx)
            yield [(i, s, self.train) for i, s in zip(idx, seeds)]


class FileSplit:
    """A split of a file-backed torchvision data set (CIFAR, ImageFolder): ``indices`` into ``base``."""

    def __init__(self, base, indices: np.ndarray, train_tf, eval_tf):
        self.items = _SeededItems(base, np.asarray(indices, dtype=np.int64), train_tf, eval_tf)

    def __len__(self) -> int:
        return len(self.items)

    def to(self, device) -> "FileSplit":
        return self

    def iterate(self, batches, train: bool, device, num_workers: int = 0):
        pin = torch.device(device).type == "cuda"
        loader = torch.utils.data.DataLoader(
            self.items, batch_sampler=_KeyBatches(batches, train), num_workers=num_workers, pin_memory=pin,
            persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@dataclass
class DataBundle:
    """The three splits of a data set plus the helpers every runner and side-trip uses."""

    name: str
    num_classes: int
    image_size: int
    train: Any
    heldout: Any
    val: Any
    num_workers: int = 0
    augment_fixed: bool = False  # fixed train/held-out batches augmented by default (digits with augmentation)

    def split(self, name: str):
        if name not in ("train", "heldout", "val"):
            raise ValueError(f"split must be 'train', 'heldout' or 'val'; got {name!r}")
        return getattr(self, name)

    def to(self, device) -> "DataBundle":
        return DataBundle(self.name, self.num_classes, self.image_size, self.train.to(device),
                          self.heldout.to(device), self.val.to(device), self.num_workers, self.augment_fixed)

    def train_batches(self, order: BatchOrder, start: int, stop: int, device, rank: int = 0, world: int = 1,
                      augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches for updates ``start .. stop-1`` of ``order`` (this rank's share)."""
        def keys():
            for t in range(start, stop):
                yield order.indices(t)[rank::world], order.sample_seeds(t)[rank::world]
        return self.train.iterate(keys(), train=augment, device=device, num_workers=self.num_workers)

    def batch_at(self, order: BatchOrder, step: int, device, augment: bool = True):
        """The (whole, global) training batch of update ``step``."""
        return next(self.train_batches(order, step, step + 1, device, augment=augment))

    def fixed_batches(self, split: str, n_batches: int, batch_size: int, seed: int, device,
                      augment: bool | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n_batches`` fixed batches of ``batch_size`` from ``split`` (deterministic in ``seed``).

        Batches are disjoint when the split is large enough (``n_batches * batch_size <= len``); otherwise
        each batch is an independent draw without replacement (batches may then share examples).
        ``augment``: None = the data set's policy (``augment_fixed``: digits with augmentation augment
        train and held-out fixed batches like the training stream, with the fixed seeds above; cifar and
        imagenet fixed batches are not augmented); the validation split is never augmented.
        """
        s = self.split(split)
        if augment is None:
            augment = self.augment_fixed and split != "val"
        n = len(s)
        if not (1 <= batch_size <= n):
            raise ValueError(f"batch_size must be in [1, {n}] (the {split} split has {n} examples); got {batch_size}")
        if n_batches < 1:
            raise ValueError(f"number of batches must be >= 1; got {n_batches}")
        g = torch.Generator().manual_seed(int(seed))
        if n_batches * batch_size <= n:
            perm = torch.randperm(n, generator=g)
            idx = [perm[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]
        else:
            idx = [torch.randperm(n, generator=g)[:batch_size] for _ in range(n_batches)]
        seeds = [[int(v) for v in _seed_words(seed, 2, i, n=batch_size) >> np.uint64(1)] for i in range(n_batches)]
        return list(s.iterate(zip(idx, seeds), train=augment, device=device, num_workers=self.num_workers))

    def eval_batches(self, split: str, max_samples: int, batch_size: int, device, rank: int = 0, world: int = 1):
        """Batches covering a fixed subset of at most ``max_samples`` examples of ``split`` (no augmentation);
        with ``world`` ranks, rank ``rank``'s share: batches ``rank, rank + world, ...`` of that cover."""
        s = self.split(split)
        n = len(s)
        if max_samples >= n:
            idx = torch.arange(n)
        else:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_samples].sort().values
        chunks = [(idx[i:i + batch_size], None) for i in range(0, len(idx), batch_size)][rank::world]
        return s.iterate(chunks, train=False, device=device, num_workers=self.num_workers)


# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    images, target = d.images.astype(np.float32), d.target.astype(np.int64)
    images.setflags(write=False)
    target.setflags(write=False)
    return images, target


@functools.lru_cache(maxsize=8)
def digits_split_indices(heldout_size: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed stratified (train, held-out, validation) index arrays into ``load_digits()``."""
    from sklearn.model_selection import train_test_split
    y = _load_digits_arrays()[1]
    idx = np.arange(len(y))
    if not (10 <= heldout_size <= len(y) - DIGITS_VAL_SIZE - 100):
        raise ValueError(f"heldout_size for digits must be in [10, {len(y) - DIGITS_VAL_SIZE - 100}]; "
                         f"got {heldout_size}")
    rest, val = train_test_split(idx, test_size=DIGITS_VAL_SIZE, stratify=y, random_state=0)
    train, held = train_test_split(rest, test_size=heldout_size, stratify=y[rest], random_state=1)
    out = tuple(np.sort(a) for a in (train, held, val))
    for a in out:
        a.setflags(write=False)
    return out


def _digits(image_size: int, heldout_size: int, augment: DigitsAugment | None = None) -> DataBundle:
    images, target = _load_digits_arrays()
    x = torch.from_numpy(images / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    if image_size != 8:
        mode = "nearest" if image_size % 8 == 0 else "bilinear"
        kw = {} if mode == "nearest" else {"align_corners": False}
        x = F.interpolate(x, size=(image_size, image_size), mode=mode, **kw)
    y = torch.from_numpy(target.copy())
    tr, he, va = (a.copy() for a in digits_split_indices(heldout_size))
    mean, std = x[tr].mean(), x[tr].std()
    xn = ((x - mean) / std).expand(-1, 3, -1, -1).contiguous()

    def mk(i, aug):
        t = torch.from_numpy(i)
        if aug is None:
            return TensorSplit(xn[t].clone(), y[t].clone())
        return TensorSplit(xn[t].clone(), y[t].clone(), raw=x[t].clone(), augment=aug, norm=(mean, std))

    return DataBundle("digits", 10, image_size, mk(tr, augment), mk(he, augment), mk(va, None),
                      augment_fixed=augment is not None)


def _require_dir(data_dir: str | None, dataset: str, layout: str) -> Path:
    if not data_dir:
        raise FileNotFoundError(f"dataset {dataset!r} needs --data-dir (nothing is downloaded); "
                                f"expected layout: {layout}")
    p = Path(data_dir).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"data_dir {str(p)!r} for dataset {dataset!r} does not exist; "
                                f"expected layout: {layout}")
    return p


def _heldout_split(n: int, heldout_size: int, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if not (1 <= heldout_size < n):
        raise ValueError(f"heldout_size must be in [1, {n - 1}] for {dataset} ({n} training examples); "
                         f"got {heldout_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    return np.sort(perm[heldout_size:]), np.sort(perm[:heldout_size])


def _cifar(dataset: str, data_dir, image_size: int, heldout_size: int, augment: bool, num_workers: int):
    from torchvision import datasets
    from torchvision import transforms as T
    folder = "cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python"
    files = "data_batch_1..5, test_batch, batches.meta" if dataset == "cifar10" else "train, test, meta"
    layout = f"DATA_DIR/{folder}/ with {files} (torchvision's python-pickle format)"
    root = _require_dir(data_dir, dataset, layout)
    if root.name == folder:
        root = root.parent
    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    try:
        train_base = cls(str(root), train=True, download=False)
        val_base = cls(str(root), train=False, download=False)
    except RuntimeError as e:
        raise FileNotFoundError(f"{dataset} not found or incomplete under data_dir {str(root)!r} ({e}); "
                                f"expected layout: {layout}") from None
    norm = T.Normalize(_CIFAR_MEAN[dataset], _CIFAR_STD[dataset])
    resize = [T.Resize(image_size)] if image_size != 32 else []
    eval_tf = T.Compose(resize + [T.ToTensor(), norm])
    train_tf = T.Compose(resize + [T.RandomCrop(image_size, padding=4 * image_size // 32),
                                   T.RandomHorizontalFlip(), T.ToTensor(), norm]) if augment else None
    tr, he = _heldout_split(len(train_base), heldout_size, dataset)
    nc = 10 if dataset == "cifar10" else 100
    return DataBundle(dataset, nc, image_size, FileSplit(train_base, tr, train_tf, eval_tf),
                      FileSplit(train_base, he, None, eval_tf),
                      FileSplit(val_base, np.arange(len(val_base)), None, eval_tf), num_workers)


def _imagenet(data_dir, image_size: int, heldout_size: int, augment: bool, num_workers: int,
              decode: str | None = None):
    from torchvision import datasets
    layout = ("DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image> (ImageFolder layout, same class "
              "folders in both; optionally torchvision ImageNet's meta.bin in DATA_DIR)")
    root = _require_dir(data_dir, "imagenet", layout)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"imagenet data_dir {str(root)!r} has no {sub!r} folder; expected layout: {layout}")
    try:
        if (root / "meta.bin").is_file():
            train_base = datasets.ImageNet(str(root), split="train")
            val_base = datasets.ImageNet(str(root), split="val")
        else:
            train_base = datasets.ImageFolder(str(root / "train"))
            val_base = datasets.ImageFolder(str(root / "val"))
    except (FileNotFoundError, RuntimeError) as e:
        raise FileNotFoundError(f"cannot read imagenet under {str(root)!r} ({e}); expected layout: {layout}") from None
    if train_base.classes != val_base.classes:
        raise FileNotFoundError(f"imagenet under {str(root)!r}: train/ and val/ have different class folders; "
                                f"expected layout: {layout}")
    tr, he = _heldout_split(len(train_base), heldout_size, "imagenet")

    def split(base, idx, train_aug):
        return ImageFolderSplit(base.samples, idx, image_size, _IMAGENET_MEAN, _IMAGENET_STD, train_aug=train_aug,
                                decode=decode)

    return DataBundle("imagenet", len(train_base.classes), image_size, split(train_base, tr, augment),
                      split(train_base, he, False), split(val_base, np.arange(len(val_base)), False), num_workers)


def build_data(cfg) -> DataBundle:
    """The :class:`DataBundle` of a (resolved) :class:`~realnet.config.TrainConfig`."""
    if cfg.dataset == "digits":
        strength = float(getattr(cfg, "augment_strength", 0.0))
        aug = DigitsAugment(strength) if (cfg.augment and strength > 0) else None
        return _digits(cfg.image_size, cfg.heldout_size, aug)
    if cfg.dataset in ("cifar10", "cifar100"):
        return _cifar(cfg.dataset, cfg.data_dir, cfg.image_size, cfg.heldout_size, cfg.augment, cfg.num_workers)
    if cfg.dataset == "imagenet":
        return _imagenet(cfg.data_dir, cfg.image_size, cfg.heldout_size, cfg.augment, cfg.num_workers,
                         getattr(cfg, "decode", None))
    raise ValueError(f"unknown dataset {cfg.dataset!r}; choose digits, cifar10, cifar100 or imagenet")
