"""Natural-looking generated JPEG image folders (for loader benchmarks and tests; nothing is downloaded).

:func:`write_image_folder` writes ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (the ImageFolder
layout :func:`realnet.data.build_data` reads for ``dataset='imagenet'``). Each image: a smooth background (a
bicubically upsampled 4x3 random colour field), 3-7 filled shapes (ellipses, rectangles, polygons) with hard
edges and a class-dependent colour bias, a soft blur and mild pixel noise, JPEG quality 90 -- close to a
photograph's cost for a JPEG decoder (entropy, edges). A fraction is written grayscale (JPEG 'L') and CMYK.
Deterministic in ``seed``.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["ImageFolderInfo", "write_image_folder"]


class ImageFolderInfo(NamedTuple):
    """What :func:`write_image_folder` wrote."""

    root: Path  # the data directory (train/ and val/ inside)
    images: int  # files written
    gray: int  # of which grayscale JPEGs
    cmyk: int  # of which CMYK JPEGs
    bytes: int  # total size on disk


def _image(rng: np.random.Generator, size: tuple[int, int], cls: int, classes: int):
    from PIL import Image, ImageDraw, ImageFilter

    w, h = size
    field = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    hue = np.array([np.cos(2 * np.pi * cls / classes), np.sin(2 * np.pi * cls / classes), 0.0]) * 80 + 128
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(v) for v in np.clip(hue + rng.normal(0, 50, 3), 0, 255))
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            pts = [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(5)]
            draw.polygon(pts, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 4, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_image_folder(root: str | Path, classes: int = 4, train_per_class: int = 8, val_per_class: int = 2,
                       size: tuple[int, int] = (500, 375), gray: float = 0.1, cmyk: float = 0.05,
                       seed: int = 0) -> ImageFolderInfo:
    """Write a generated ImageFolder under ``root`` (module docstring). ``size`` is (width, height) of a
    landscape image; every fourth image is portrait (height x width). ``gray`` / ``cmyk``: fractions of the
    images written in those modes. Raises ValueError for sizes below 32 pixels or fractions outside [0, 1]."""
    if min(size) < 32:
        raise ValueError(f"size must be at least 32x32 pixels; got {size!r}")
    if not (0 <= gray <= 1 and 0 <= cmyk <= 1 and gray + cmyk <= 1):
        raise ValueError(f"gray and cmyk must be fractions in [0, 1] with gray + cmyk <= 1; got {gray}, {cmyk}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    n = n_gray = n_cmyk = total = 0
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"c{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                wh = size if n % 4 != 3 else (size[1], size[0])
                img = _image(rng, wh, c, classes)
                u = rng.random()
                if u < gray:
                    img, n_gray = img.convert("L"), n_gray + 1
                elif u < gray + cmyk:
                    img, n_cmyk = img.convert("CMYK"), n_cmyk + 1
                p = d / f"{split}_{c:03d}_{i:05d}.jpg"
                img.save(p, quality=90)
                total += p.stat().st_size
                n += 1
    return ImageFolderInfo(root, n, n_gray, n_cmyk, total)
