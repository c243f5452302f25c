"""Image-folder input pipeline built for throughput; every batch a pure function of (seed, step, sample).

Workers (``torch.utils.data.DataLoader`` processes that persist across passes) read each file, decode it to
uint8 RGB (JPEG by libjpeg-turbo through :func:`torchvision.io.decode_jpeg`; PNG and other formats through
:func:`torchvision.io.decode_image`; grayscale and CMYK JPEGs converted to RGB), crop / flip it with
parameters drawn from the sample's own seed, resize it in uint8 (antialiased bilinear) and hand uint8 batches
``(B, 3, S, S)`` to the main process: a quarter of float32's bytes through shared memory, pinned memory and
PCIe. The main process copies each batch to the device (on CUDA on a side stream, one batch ahead of the
compute) and normalises it there: ``(x / 255 - mean) / std`` in float32.

Views of an image ``(3, H, W)`` (``S`` = image size):

* training (:func:`train_view`): torchvision's RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) rule
  (ten tries, then the centre crop clamped to the ratio) and a horizontal flip with probability 1/2; all
  random numbers are the first 41 of ``torch.rand(float64)`` from a CPU generator seeded with the sample's
  seed (:func:`crop_params`), so a view depends only on the image and the seed -- not on the worker, the
  worker count, the batch or the thread count;
* evaluation (:func:`eval_view`): shorter side resized to ``round(S * 256 / 224)``, centre crop ``S``.

An unreadable, truncated or non-image file is refused, never skipped (a skipped sample would change the batch
of every later step): :class:`ImageDecodeError` names the file. GPU decode (``decode='cuda'``: workers only
read bytes; nvjpeg decodes on the device, crops and resizes there; other pixels than the CPU path, so part of
a run's definition) is used only with a CUDA device.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

__all__ = ["ImageDecodeError", "CropBox", "crop_params", "decode_rgb", "train_view", "eval_view", "eval_resize",
           "ImageFolderSplit", "available_cores", "auto_workers", "Normalizer", "device_batches", "DECODERS"]

DECODERS = (None, "cuda")  # None: libjpeg-turbo in the CPU workers; 'cuda': nvjpeg on the device
_TRIES = 10  # RandomResizedCrop attempts before the centre-crop fallback
_SCALE = (0.08, 1.0)
_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_JPEG = b"\xff\xd8"


class ImageDecodeError(ValueError):
    """An image file cannot be read or decoded (the message names the file); images are never skipped."""


def _refusal(path: str, reason: str) -> ImageDecodeError:
    reason = str(reason).strip().splitlines()[-1] if str(reason).strip() else "unknown error"
    return ImageDecodeError(f"cannot decode image {path!r} ({reason}); replace or remove the file and re-run "
                            f"(unreadable images are refused, never skipped: skipping would change the batches)")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def auto_workers(world: int = 1, cores: int | None = None) -> int:
    """Loader workers per rank: the cores left after one main process per rank, shared by ``world`` ranks
    (at least 1)."""
    cores = available_cores() if cores is None else int(cores)
    return max(1, cores // max(1, int(world)) - 1)


# ---------------------------------------------------------------------------------------------
# decode and views
# ---------------------------------------------------------------------------------------------


def _read_bytes(path: str) -> torch.Tensor:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise _refusal(path, e.strerror or str(e)) from None
    if not raw:
        raise _refusal(path, "empty file")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


@contextlib.contextmanager
def _torchvision_io():
    """torchvision >= 0.29 marks its image decoders deprecated (in favour of TorchCodec, not a dependency
    here) with a DeprecationWarning on every call: silenced around the calls, nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


def _decode_bytes(data: torch.Tensor, path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        with _torchvision_io():
            if bytes(data[:2].tolist()) == _JPEG:
                return decode_jpeg(data, mode=ImageReadMode.RGB)
            return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise _refusal(path, str(e).split(", ")[-1]) from None


def decode_rgb(path: str) -> torch.Tensor:
    """The image at ``path`` as uint8 RGB ``(3, H, W)``; :class:`ImageDecodeError` naming the file if it cannot
    be read or decoded (truncated, damaged, not an image)."""
    return _decode_bytes(_read_bytes(path), path)


class CropBox(NamedTuple):
    """A crop of the source image (pixels) and whether the view is mirrored."""

    top: int  # first row
    left: int  # first column
    height: int  # rows
    width: int  # columns
    flip: bool  # mirror horizontally after resizing


def crop_params(seed: int, height: int, width: int) -> CropBox:
    """RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) + flip parameters of an ``height x width`` image,
    from the 41 uniforms of a CPU generator seeded with ``seed`` (4 per try: area, log-ratio, top, left;
    the last: flip)."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(4 * _TRIES + 1, generator=g, dtype=torch.float64).tolist()
    flip = u[-1] < 0.5
    area = height * width
    lo, hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    for k in range(_TRIES):
        a, b, c, d = u[4 * k:4 * k + 4]
        target = area * (_SCALE[0] + (_SCALE[1] - _SCALE[0]) * a)
        aspect = math.exp(lo + (hi - lo) * b)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(int(c * (height - h + 1)), int(d * (width - w + 1)), h, w, flip)
    ratio = width / height
    if ratio < _RATIO[0]:
        w, h = width, int(round(width / _RATIO[0]))
    elif ratio > _RATIO[1]:
        h, w = height, int(round(height * _RATIO[1]))
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w, flip)


def _resize(img: torch.Tensor, size: list[int]) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(img, size, antialias=True)


def train_view(img: torch.Tensor, seed: int, size: int) -> torch.Tensor:
    """The training view of ``img`` (uint8 ``(3, H, W)``, any device): :func:`crop_params` crop resized to
    ``size x size`` and flipped; uint8 ``(3, size, size)``."""
    box = crop_params(seed, int(img.shape[-2]), int(img.shape[-1]))
    out = _resize(img[:, box.top:box.top + box.height, box.left:box.left + box.width], [size, size])
    return out.flip(-1) if box.flip else out


def eval_resize(size: int) -> int:
    """The shorter side before the evaluation centre crop: ``round(size * 256 / 224)``."""
    return int(round(size * 256 / 224))


def eval_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side resized to :func:`eval_resize` (as ``torchvision.transforms.Resize(int)``), centre crop
    ``size`` (as ``CenterCrop``); uint8 ``(3, size, size)``."""
    r = eval_resize(size)
    h, w = int(img.shape[-2]), int(img.shape[-1])
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(r * long / short)
    out = _resize(img, [r, new_long] if h <= w else [new_long, r])
    h, w = int(out.shape[-2]), int(out.shape[-1])
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return out[:, top:top + size, left:left + size]


# ---------------------------------------------------------------------------------------------
# the worker side
# ---------------------------------------------------------------------------------------------


class _Items(torch.utils.data.Dataset):
    """Map ``(position, seed, train)`` keys to ``(uint8 view, target, error)`` of ``samples[indices[position]]``;
    with ``raw``, to the file's bytes instead of a view (GPU decode)."""

    def __init__(self, samples: Sequence[tuple[str, int]], indices: np.ndarray, size: int, raw: bool):
        self.samples, self.indices, self.size, self.raw = samples, indices, int(size), raw

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        pos, seed, train = key
        path, target = self.samples[int(self.indices[pos])]
        try:
            if self.raw:
                return _read_bytes(path), int(target), "", (int(seed), bool(train), path)
            img = decode_rgb(path)
        except ImageDecodeError as e:
            blank = torch.zeros(0 if self.raw else (3, self.size, self.size), dtype=torch.uint8)
            return blank, int(target), str(e), (int(seed), bool(train), path)
        x = train_view(img, seed, self.size) if train else eval_view(img, self.size)
        return x.contiguous(), int(target), "", None


def _collate(items):
    """``(x, y, errors)``: uint8 ``(B, 3, S, S)`` (in shared memory inside a worker), int64 targets and the
    error messages of the samples that could not be decoded; raw bytes (GPU decode): ``(list of byte tensors,
    y, errors, [(seed, train, path)])``."""
    xs = [i[0] for i in items]
    y = torch.tensor([i[1] for i in items], dtype=torch.int64)
    errors = [i[2] for i in items if i[2]]
    if items and items[0][3] is not None and xs[0].dim() == 1:  # raw bytes for the device decoder
        return xs, y, errors, [i[3] for i in items]
    if errors:
        return torch.zeros(0, dtype=torch.uint8), y, errors
    out = torch.empty((len(xs),) + tuple(xs[0].shape), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        out.share_memory_()  # written once here, sent to the main process without another copy
    torch.stack(xs, out=out)
    return out, y, errors


class _Feed:
    """The batch sampler of a persistent loader: it yields the keys of whatever batches it was last given."""

    def __init__(self):
        self.source: Iterable | None = None

    def __iter__(self):  # called more than once per pass by the DataLoader: the same iterator each time
        return iter(self.source if self.source is not None else ())


def _keys(batches, train: bool):
    for idx, seeds in batches:
        idx = torch.as_tensor(idx, dtype=torch.long).tolist()
        seeds = seeds if seeds is not None else [0] * len(idx)
        yield [(i, int(s), bool(train)) for i, s in zip(idx, seeds)]


# ---------------------------------------------------------------------------------------------
# the device side
# ---------------------------------------------------------------------------------------------


class Normalizer:
    """``(x / 255 - mean) / std`` of uint8 ``(B, 3, H, W)`` batches in float32 on their device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self._on: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.device)
        if key not in self._on:
            self._on[key] = (torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1),
                             torch.tensor(self.std, device=x.device).view(1, 3, 1, 1))
        mean, std = self._on[key]
        return x.float().div_(255.0).sub_(mean).div_(std)


def device_batches(batches: Iterable[tuple], device) -> Iterator[tuple]:
    """``(x, y, *rest)`` host batches moved to ``device``; on CUDA the copy of batch ``k + 1`` is issued on a
    side stream before batch ``k`` is handed out, and the compute stream waits for it (``record_stream`` keeps
    the allocator from reusing the memory early). Elsewhere a plain ``.to(device)``."""
    device = torch.device(device)
    if device.type != "cuda":
        for b in batches:
            yield (b[0].to(device), b[1].to(device)) + tuple(b[2:])
        return
    side = torch.cuda.Stream(device)  # pragma: no cover - needs a GPU from here on

    def issue(b):
        with torch.cuda.stream(side):
            return (b[0].to(device, non_blocking=True), b[1].to(device, non_blocking=True)) + tuple(b[2:])

    def ready(b):
        current = torch.cuda.current_stream(device)
        current.wait_stream(side)
        b[0].record_stream(current)
        b[1].record_stream(current)
        return b

    ahead = None
    for b in batches:
        nxt = issue(b)
        if ahead is not None:
            yield ready(ahead)
        ahead = nxt
    if ahead is not None:
        yield ready(ahead)


def _decode_on_device(datas: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    """nvjpeg decode (``torchvision.io.decode_jpeg(list, device=cuda)``; the byte tensors stay on the CPU) of a
    batch on ``device``; files nvjpeg cannot take (not JPEG, CMYK, ...) are decoded on the CPU and moved."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpeg = [i for i, d in enumerate(datas) if bytes(d[:2].tolist()) == _JPEG]
    out: list[torch.Tensor | None] = [None] * len(datas)
    with _torchvision_io():
        try:
            for i, img in zip(jpeg, decode_jpeg([datas[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)):
                out[i] = img
        except RuntimeError:
            for i in jpeg:
                try:
                    out[i] = decode_jpeg(datas[i], mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    out[i] = None
    for i, img in enumerate(out):
        if img is None:
            out[i] = _decode_bytes(datas[i], paths[i]).to(device)
    return out  # type: ignore[return-value]


class ImageFolderSplit:
    """A split of an image folder: ``samples`` (path, class index) and ``indices`` into them; batches come out
    normalised on the device (module docstring). ``train_aug``: training batches get :func:`train_view` (else
    every batch gets :func:`eval_view`). ``decode``: one of :data:`DECODERS`."""

    def __init__(self, samples: Sequence[tuple[str, int]], indices, image_size: int, mean, std,
                 train_aug: bool = True, decode: str | None = None):
        if decode not in DECODERS:
            raise ValueError(f"decode must be None (CPU workers) or 'cuda'; got {decode!r}")
        self.samples = list(samples)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.image_size, self.train_aug, self.decode = int(image_size), bool(train_aug), decode
        self.normalize = Normalizer(mean, std)
        self._loader = None  # the persistent DataLoader (built on first use)
        self._loader_key: tuple | None = None
        self._feed = _Feed()
        self._busy = False  # a pass over the persistent loader is in progress

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device) -> "ImageFolderSplit":
        return self

    def __getstate__(self):  # workers get the samples, never a loader
        state = dict(self.__dict__)
        state.update(_loader=None, _loader_key=None, _busy=False)
        return state

    def _host_batches(self, batches, train: bool, num_workers: int, pin: bool, raw: bool):
        items = _Items(self.samples, self.indices, self.image_size, raw)
        keys = _keys(batches, train and self.train_aug)
        if num_workers <= 0:
            for key in keys:
                yield _collate([items[k] for k in key])
            return
        key = (num_workers, pin, raw)
        if self._busy or (self._loader is not None and self._loader_key != key):
            # another pass is running (or other settings): a one-off loader leaves the persistent one alone
            loader = torch.utils.data.DataLoader(items, batch_sampler=list(keys), num_workers=num_workers,
                                                 collate_fn=_collate, pin_memory=pin, prefetch_factor=4)
            yield from loader
            return
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                items, batch_sampler=self._feed, num_workers=num_workers, collate_fn=_collate, pin_memory=pin,
                persistent_workers=True, prefetch_factor=4)
            self._loader_key = key
        self._feed.source = keys
        self._busy = True
        try:
            yield from self._loader
        finally:
            self._busy = False
            self._feed.source = None

    def iterate(self, batches: Iterable[tuple[Any, Sequence[int] | None]], train: bool, device,
                num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float32 ``(B, 3, S, S)`` batches and int64 targets on ``device`` for ``batches`` of
        ``(indices, seeds)``; :class:`ImageDecodeError` at the first file that cannot be decoded."""
        device = torch.device(device)
        if self.decode == "cuda" and device.type != "cuda":
            raise ValueError(f"this data set is decoded on the GPU (decode='cuda': nvjpeg pixels); its batches cannot "
                             f"be reproduced on device {str(device)!r}: use a CUDA device")
        gpu = self.decode == "cuda"
        host = self._host_batches(batches, train, num_workers, pin=device.type == "cuda", raw=gpu)
        if gpu:
            yield from self._gpu_batches(host, device)
            return
        for x, y, errors in device_batches(host, device):
            if errors:
                raise ImageDecodeError(errors[0] + (f" [{len(errors) - 1} more in this batch]"
                                                    if len(errors) > 1 else ""))
            yield self.normalize(x), y

    def _gpu_batches(self, host, device):
        """Device decode: nvjpeg, then the same views as the CPU path computed on ``device``."""
        for datas, y, errors, meta in host:
            if errors:
                raise ImageDecodeError(errors[0])
            imgs = _decode_on_device(datas, [m[2] for m in meta], device)
            views = [train_view(img, seed, self.image_size) if train else eval_view(img, self.image_size)
                     for img, (seed, train, _) in zip(imgs, meta)]
            yield self.normalize(torch.stack(views)), y.to(device, non_blocking=True)
