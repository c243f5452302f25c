"""Data: fixed train / held-out / validation splits and a deterministic, seedable batch order.

Data sets (``TrainConfig.dataset``):

* ``digits`` (default, embedded): scikit-learn's bundled ``load_digits`` (1,797 real 8x8 digits, no
  download). Fixed stratified split: validation 300, held-out ``heldout_size`` (default 300), train the
  rest (1,197). Images are scaled to [0, 1], upsampled to ``image_size`` (nearest neighbour for
  multiples of 8, else bilinear), normalised with the training mean/std and repeated to 3 channels.
  Kept in memory as tensors; never augmented.
* ``cifar10`` / ``cifar100``: torchvision format under ``data_dir`` (``cifar-10-batches-py/`` or
  ``cifar-100-python/``), ``download=False``. Held-out = a fixed subset of the official training set,
  validation = the official test set. Training batches: random crop (pad 4) + horizontal flip.
* ``imagenet``: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (torchvision ``ImageFolder``
  layout; with a ``meta.bin`` present, ``torchvision.datasets.ImageNet`` is used). Held-out = a fixed
  subset of the training folder; validation = ``val``. Training: RandomResizedCrop + flip; evaluation:
  resize to 256/224 of ``image_size`` + centre crop.

Batch order (:class:`BatchOrder`): epoch ``e`` is ``torch.randperm(n)`` from a CPU generator seeded with
``SeedSequence([data_seed, e])``; the batch at step ``t`` is slot ``t % steps_per_epoch`` of epoch
``t // steps_per_epoch`` (last partial batch dropped). Random augmentation of sample ``j`` of step ``t``
is seeded from ``SeedSequence([data_seed, 1, t])``, so a batch is a pure function of
``(data_seed, t)``: resuming and branching at any step reproduce it exactly. Under DDP rank ``r`` of
``w`` takes positions ``r, r+w, ...`` of the global batch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BatchOrder", "TensorSplit", "FileSplit", "DataBundle", "build_data", "digits_split_indices",
           "DIGITS_VAL_SIZE"]

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


class TensorSplit:
    """An in-memory split: ``x`` (N, 3, H, W) float32, ``y`` (N,) int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError("x and y must have the same length")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "TensorSplit":
        return TensorSplit(self.x.to(device), self.y.to(device))

    def iterate(self, batches: Iterable[tuple[Any, Sequence[int] | None]], train: bool, device,
                num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx, _seeds in batches:
            i = _as_index(idx).to(self.x.device)
            yield self.x[i].to(device, non_blocking=True), self.y[i].to(device, non_blocking=True)


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

    def split(self, name: str):
        if name not in ("train", "heldout", "val"):
            raise ValueError(f"split must be 'train', 'heldout' or 'val'; got {name!r}")
        return getattr(self, name)

    def to(self, device) -> "DataBundle":
        return DataBundle(self.name, self.num_classes, self.image_size, self.train.to(device),
                          self.heldout.to(device), self.val.to(device), self.num_workers)

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
                      augment: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n_batches`` fixed batches of ``batch_size`` from ``split`` (deterministic in ``seed``).

        Batches are disjoint when the split is large enough (``n_batches * batch_size <= len``); otherwise
        each batch is an independent draw without replacement (batches may then share examples).
        """
        s = self.split(split)
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
        return list(s.iterate(zip(idx, seeds), train=augment, device=device, num_workers=0))

    def eval_batches(self, split: str, max_samples: int, batch_size: int, device):
        """Batches covering a fixed subset of at most ``max_samples`` examples of ``split`` (no augmentation)."""
        s = self.split(split)
        n = len(s)
        if max_samples >= n:
            idx = torch.arange(n)
        else:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_samples].sort().values
        chunks = [(idx[i:i + batch_size], None) for i in range(0, len(idx), batch_size)]
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
        raise ValueError(f"heldout_size for digits must be in [10, {len(y) - DIGITS_VAL_SIZE - 100}]; got {heldout_size}")
    rest, val = train_test_split(idx, test_size=DIGITS_VAL_SIZE, stratify=y, random_state=0)
    train, held = train_test_split(rest, test_size=heldout_size, stratify=y[rest], random_state=1)
    out = tuple(np.sort(a) for a in (train, held, val))
    for a in out:
        a.setflags(write=False)
    return out


def _digits(image_size: int, heldout_size: int) -> DataBundle:
    images, target = _load_digits_arrays()
    x = torch.from_numpy(images / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    if image_size != 8:
        mode = "nearest" if image_size % 8 == 0 else "bilinear"
        kw = {} if mode == "nearest" else {"align_corners": False}
        x = F.interpolate(x, size=(image_size, image_size), mode=mode, **kw)
    y = torch.from_numpy(target.copy())
    tr, he, va = (a.copy() for a in digits_split_indices(heldout_size))
    mean, std = x[tr].mean(), x[tr].std()
    x = ((x - mean) / std).expand(-1, 3, -1, -1).contiguous()
    mk = lambda i: TensorSplit(x[torch.from_numpy(i)].clone(), y[torch.from_numpy(i)].clone())  # noqa: E731
    return DataBundle("digits", 10, image_size, mk(tr), mk(he), mk(va))


def _require_dir(data_dir: str | None, dataset: str, layout: str) -> Path:
    if not data_dir:
        raise FileNotFoundError(f"dataset {dataset!r} needs --data-dir (nothing is downloaded); expected layout: {layout}")
    p = Path(data_dir).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"data_dir {str(p)!r} for dataset {dataset!r} does not exist; expected layout: {layout}")
    return p


def _heldout_split(n: int, heldout_size: int, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if not (1 <= heldout_size < n):
        raise ValueError(f"heldout_size must be in [1, {n - 1}] for {dataset} ({n} training examples); got {heldout_size}")
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


def _imagenet(data_dir, image_size: int, heldout_size: int, augment: bool, num_workers: int):
    from torchvision import datasets
    from torchvision import transforms as T
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
    norm = T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    resize = int(round(image_size * 256 / 224))
    eval_tf = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), norm])
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm]) \
        if augment else None
    tr, he = _heldout_split(len(train_base), heldout_size, "imagenet")
    return DataBundle("imagenet", len(train_base.classes), image_size, FileSplit(train_base, tr, train_tf, eval_tf),
                      FileSplit(train_base, he, None, eval_tf),
                      FileSplit(val_base, np.arange(len(val_base)), None, eval_tf), num_workers)


def build_data(cfg) -> DataBundle:
    """The :class:`DataBundle` of a (resolved) :class:`~realnet.config.TrainConfig`."""
    if cfg.dataset == "digits":
        return _digits(cfg.image_size, cfg.heldout_size)
    if cfg.dataset in ("cifar10", "cifar100"):
        return _cifar(cfg.dataset, cfg.data_dir, cfg.image_size, cfg.heldout_size, cfg.augment, cfg.num_workers)
    if cfg.dataset == "imagenet":
        return _imagenet(cfg.data_dir, cfg.image_size, cfg.heldout_size, cfg.augment, cfg.num_workers)
    raise ValueError(f"unknown dataset {cfg.dataset!r}; choose digits, cifar10, cifar100 or imagenet")
