"""realnet.pipeline: decode of RGB / grayscale / CMYK JPEGs, seeded views, workers == main process, refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import realnet
from realnet import pipeline
from realnet.config import TrainConfig
from realnet.synthetic_images import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    info = write_image_folder(root, classes=2, train_per_class=7, val_per_class=3, size=(96, 72), gray=0.25,
                              cmyk=0.25, seed=1)
    assert info.gray >= 1 and info.cmyk >= 1 and info.images == 20
    return root


def _bundle(root, workers, **kw):
    cfg = TrainConfig(dataset="imagenet", data_dir=str(root), image_size=48, heldout_size=4, batch_size=4,
                      num_workers=workers, **kw)
    return realnet.build_data(realnet.resolve_config(cfg))


def test_decode_matches_pil_for_rgb_gray_and_cmyk(folder):
    from PIL import Image

    modes = set()
    for f in sorted(folder.rglob("*.jpg")):
        with Image.open(f) as im:
            modes.add(im.mode)
            ref = np.asarray(im.convert("RGB"))
        x = pipeline.decode_rgb(str(f))
        assert x.dtype == torch.uint8 and x.shape == (3,) + ref.shape[:2]
        assert np.abs(x.permute(1, 2, 0).numpy().astype(int) - ref).max() <= 2, f
    assert modes == {"RGB", "L", "CMYK"}


def test_crop_parameters_follow_torchvision_random_resized_crop():
    from torchvision import transforms as T

    h, w = 375, 500
    ours = [pipeline.crop_params(s, h, w) for s in range(3000)]
    assert ours[7] == pipeline.crop_params(7, h, w)  # a pure function of the seed
    for b in ours:
        assert 0 <= b.top and b.top + b.height <= h and 0 <= b.left and b.left + b.width <= w
    torch.manual_seed(0)
    img = torch.zeros(3, h, w)
    ref = [T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(3000)]
    area = np.array([b.height * b.width for b in ours]) / (h * w)
    ref_area = np.array([r[2] * r[3] for r in ref]) / (h * w)
    aspect = np.log([b.width / b.height for b in ours])
    ref_aspect = np.log([r[3] / r[2] for r in ref])
    # same distribution (two-sample KS, false-alarm rate 0.1% each); the flip is a fair coin
    assert stats.ks_2samp(area, ref_area).pvalue > 1e-3
    assert stats.ks_2samp(aspect, ref_aspect).pvalue > 1e-3
    assert abs(np.mean([b.flip for b in ours]) - 0.5) < 3.3 * 0.5 / np.sqrt(3000)


def test_eval_view_is_resize_and_centre_crop():
    from torchvision.transforms import v2

    for shape in ((3, 75, 101), (3, 101, 75), (3, 300, 64)):
        img = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        ref = v2.Compose([v2.Resize(pipeline.eval_resize(48), antialias=True), v2.CenterCrop(48)])(img)
        assert torch.equal(pipeline.eval_view(img, 48), ref), shape


def test_two_workers_give_the_batches_of_the_main_process(folder):
    with_workers, inline = _bundle(folder, 2), _bundle(folder, 0)
    order = realnet.BatchOrder(len(inline.train), 4, seed=3)
    a = list(with_workers.train_batches(order, 0, 5, "cpu"))
    b = list(inline.train_batches(order, 0, 5, "cpu"))
    assert len(a) == 5 and a[0][0].shape == (4, 3, 48, 48) and a[0][0].dtype == torch.float32
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], a[1][0]) and abs(float(a[0][0].mean())) < 2
    # an evaluation in the middle of the training stream (persistent workers) leaves the stream intact
    stream = with_workers.train_batches(order, 0, 5, "cpu")
    assert torch.equal(next(stream)[0], a[0][0])
    ev = list(with_workers.eval_batches("val", 100, 4, "cpu"))
    assert [len(y) for _, y in ev] == [4, 2]
    assert torch.equal(next(stream)[0], a[1][0])
    ev0 = list(inline.eval_batches("val", 100, 4, "cpu"))
    assert all(torch.equal(x, x0) for (x, _), (x0, _) in zip(ev, ev0))
    fixed = with_workers.fixed_batches("heldout", 1, 4, 0, "cpu")
    assert torch.equal(fixed[0][0], inline.fixed_batches("heldout", 1, 4, 0, "cpu")[0][0])


def test_unreadable_images_and_missing_folders_are_refused(folder, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    victim = sorted((bad / "val").rglob("*.jpg"))[1]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])
    for workers in (0, 2):
        data = _bundle(bad, workers)
        with pytest.raises(pipeline.ImageDecodeError, match=rf"cannot decode image .*{victim.name}.*truncated.*"
                                                            r"refused, never skipped"):
            list(data.eval_batches("val", 100, 4, "cpu"))
    victim.write_bytes(b"not an image")
    with pytest.raises(pipeline.ImageDecodeError, match=victim.name):
        list(_bundle(bad, 0).eval_batches("val", 100, 4, "cpu"))
    shutil.rmtree(bad / "val")
    with pytest.raises(FileNotFoundError, match="has no 'val' folder; expected layout: DATA_DIR/train/<class>"):
        _bundle(bad, 0)
    gpu_split = pipeline.ImageFolderSplit([(str(victim), 0)], [0], 48, (0.5,) * 3, (0.5,) * 3, decode="cuda")
    with pytest.raises(ValueError, match="decoded on the GPU .*cannot be reproduced on device 'cpu'"):
        next(gpu_split.iterate([([0], [1])], True, "cpu"))
    with pytest.raises(realnet.ConfigError, match="decode='cuda' needs dataset 'imagenet' on a CUDA device"):
        realnet.resolve_config(TrainConfig(dataset="imagenet", data_dir=str(folder), device="cpu", decode="cuda"))


def test_worker_count_comes_from_the_cores():
    assert pipeline.auto_workers(1, cores=16) == 15 and pipeline.auto_workers(8, cores=16) == 1
    assert pipeline.auto_workers(1, cores=1) == 1
    assert realnet.resolve_config(TrainConfig()).num_workers == pipeline.auto_workers(1)


def test_bad_data_is_one_line_naming_the_option(folder, tmp_path, capsys):
    """Through ``realnet train``: a data dir without train/ and val/ and a truncated training JPEG (refused, never
    skipped, with a loader worker) each end with exit code 2 and one line on stderr naming the option or the file,
    no traceback."""
    import shutil

    from realnet.cli import main as cli_main

    args = ["train", "--dataset=imagenet", "--model=resnet20", "--width=4", "--image-size=32", "--heldout-size=4",
            "--batch-size=4", "--steps=2", "--eval-every=0", "--progress=false", "--num-workers=1"]
    (tmp_path / "empty").mkdir()
    assert cli_main(args + [f"--data-dir={tmp_path / 'empty'}", f"--out={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "imagenet data_dir" in err[0] and "has no 'train' folder" in err[0], err
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    victims = sorted((bad / "train").rglob("*.jpg"))
    for v in victims:  # every training image truncated: the first batch hits one, whatever the order
        v.write_bytes(v.read_bytes()[:200])
    assert cli_main(args + [f"--data-dir={bad}", f"--out={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot decode image" in err[0] and "refused, never skipped" in err[0], err
    assert "Traceback" not in "\n".join(err)
