import io
import os
import zipfile

import numpy as np
import pytest
import torch

from metaedge.train.data import (DataError, FewShotDataset, ImageFolderDataset, Omniglot, SyntheticGlyphs,
                                 resize_and_color)


def bilinear_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """float64 bilinear resize with half-pixel centres and edge clamping (no antialias): [h, w, c]."""
    h, w = img.shape[:2]
    ys = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    f = img.astype(np.float64)
    top = f[y0][:, x0] * (1 - fx) + f[y0][:, x1] * fx
    bottom = f[y1][:, x0] * (1 - fx) + f[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("src,dst", [((105, 105), (28, 28)), ((30, 50), (28, 28)), ((7, 9), (28, 21))])
def test_resize_matches_half_pixel_bilinear_reference(rng, src, dst):
    img = rng.integers(0, 256, size=(*src, 3), dtype=np.uint8)
    ref_rgb = bilinear_reference(img, *dst)
    out = resize_and_color([img], dst, "rgb")[0].permute(1, 2, 0).numpy().astype(np.float64)
    assert np.abs(out - ref_rgb).max() <= 0.5 + 1e-3  # only the uint8 rounding of the cache
    gray_ref = ref_rgb @ np.array([0.299, 0.587, 0.114])
    gray = resize_and_color([img], dst, "gray")[0, 0].numpy().astype(np.float64)
    assert np.abs(gray - gray_ref).max() <= 0.5 + 1e-3


def test_resize_identity_and_rgba_and_errors():
    img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert np.array_equal(resize_and_color([img], (28, 28), "gray")[0, 0].numpy(), img)
    rgba = np.dstack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30, 99)])
    assert resize_and_color([rgba], (4, 4), "rgb")[0, :, 0, 0].tolist() == [10, 20, 30]
    with pytest.raises(DataError, match="uint8"):
        resize_and_color([img.astype(np.float32)], (4, 4), "gray")


def test_to_input_inverts_and_normalises():
    from metaedge.runtime.spec import PreprocessSpec
    pre = PreprocessSpec(size=(2, 2), color="gray", invert=True, mean=(0.5,), std=(0.25,))
    images = torch.tensor([[[[0, 255], [51, 204]]]], dtype=torch.uint8)
    ds = FewShotDataset(images, [0], ["a"], pre)
    expected = ((255 - images.float()) / 255 - 0.5) / 0.25
    assert torch.allclose(ds.batch([0]), expected)


def test_synthetic_glyphs_deterministic_and_disjoint():
    a = SyntheticGlyphs("train", num_classes=20, samples_per_class=4, seed=7)
    b = SyntheticGlyphs("train", num_classes=20, samples_per_class=4, seed=7)
    c = SyntheticGlyphs("train", num_classes=20, samples_per_class=4, seed=8)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    test = SyntheticGlyphs("test", num_classes=20, samples_per_class=4, seed=7)
    assert not set(a.class_names) & set(test.class_names)
    full = SyntheticGlyphs(None, num_classes=20, samples_per_class=4, seed=7)
    # a class is the same glyph whichever split builds it
    j = full.class_names.index(test.class_names[0])
    assert torch.equal(full.images[full.class_indices(j)], test.images[test.class_indices(0)])
    assert a.images.dtype == torch.uint8 and a.images.shape[1:] == (1, 28, 28)
    assert a.counts.tolist() == [4] * a.num_classes
    # strokes are drawn: images are not blank, samples of a class differ (jitter)
    assert a.images.float().mean() > 5 and not torch.equal(a.images[0], a.images[1])


def test_split_by_class_and_group_are_disjoint():
    ds = SyntheticGlyphs(None, num_classes=30, samples_per_class=2)
    ds.groups = [f"g{c % 5}" for c in range(ds.num_classes)]
    parts = ds.split((0.6, 0.2, 0.2), seed=1)
    names = [set(p.class_names) for p in parts]
    assert sum(len(n) for n in names) == 30 and not (names[0] & names[1] or names[0] & names[2])
    parts = ds.split((0.6, 0.2, 0.2), seed=1, by="group")
    groups = [set(p.groups) for p in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    with pytest.raises(DataError, match="group"):
        ds.select_groups(["nope"])


def test_omniglot_from_zip(omniglot_dir):
    eval_alphabets = ["Japanese_(katakana)", "Sanskrit", "Tagalog"]
    ds = Omniglot(omniglot_dir, sets="images_background_small2", alphabets=eval_alphabets, rotations=(0, 180))
    assert ds.num_classes == 2 * 106 and len(ds) == 2 * 2120 and set(ds.alphabets) == set(eval_alphabets)
    assert ds.preprocess.invert and ds.preprocess.size == (28, 28)
    c = ds.class_names.index(ds.class_names[0] + "/rot180")
    assert torch.equal(ds.images[ds.class_indices(c)], torch.rot90(ds.images[ds.class_indices(0)], 2, (2, 3)))
    # raw pixels: white background, dark strokes; the network input has strokes = 1
    assert ds.images.float().mean() > 200
    assert ds.batch(range(20)).mean() < 0.3
    mirrored = Omniglot(omniglot_dir, sets="images_background_small2", alphabets=["Tagalog"], rotations=(0, 90),
                        mirror=True)
    assert mirrored.num_classes == 4 * 17 and mirrored.class_names[-1].endswith("/rot90/mirror")
    m = mirrored.class_names.index(mirrored.class_names[0] + "/mirror")
    assert torch.equal(mirrored.images[mirrored.class_indices(m)],
                       torch.flip(mirrored.images[mirrored.class_indices(0)], dims=(3,)))
    train, val = mirrored.split((0.5, 0.5), seed=0)  # a character's 4 variants stay in one split
    assert train.num_classes % 4 == 0 and val.num_classes % 4 == 0
    both = Omniglot(omniglot_dir, sets=["images_background_small1", "images_background_small2"])
    assert both.num_classes == 136 + 106  # Greek and Latin appear in both zips: kept once
    with pytest.raises(DataError, match="not in the data"):
        Omniglot(omniglot_dir, sets="images_background_small1", alphabets=["Klingon"])
    with pytest.raises(DataError, match="rotations"):
        Omniglot(omniglot_dir, rotations=(45,))


def test_omniglot_torchvision_layout(tmp_path, omniglot_dir):
    root = tmp_path / "omniglot-py" / "images_background"
    with zipfile.ZipFile(os.path.join(omniglot_dir, "images_background_small1.zip")) as zf:
        names = [n for n in zf.namelist() if "/Greek/character0" in n and n.endswith(".png")][:40]
        for n in names:
            parts = n.split("/")
            target = root.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(n))
    ds = Omniglot(str(tmp_path), sets="images_background")
    from_zip = Omniglot(omniglot_dir, sets="images_background_small1", alphabets=["Greek"])
    assert ds.alphabets == ["Greek"] and ds.num_classes == 2
    assert torch.equal(ds.images[:20], from_zip.images[:20])


def _png(color, size=(12, 10), mode="RGB"):
    from PIL import Image
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_nested_errors_and_skip(tmp_path):
    for cls, color in (("animals/cat", (255, 0, 0)), ("animals/dog", (0, 255, 0)), ("tools/bolt", (0, 0, 255))):
        d = tmp_path / cls
        d.mkdir(parents=True)
        for i in range(3):
            (d / f"{i}.png").write_bytes(_png(color))
    (tmp_path / "tools" / "bolt" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg"):
        ImageFolderDataset(str(tmp_path), size=8)
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = ImageFolderDataset(str(tmp_path), size=8, on_error="skip", mean=(0, 0, 0), std=(1, 1, 1))
    assert ds.class_names == ["animals/cat", "animals/dog", "tools/bolt"]
    assert ds.groups == ["animals", "animals", "tools"] and len(ds) == 9
    assert ds.images[ds.class_indices(0)][:, 0].float().mean() == 255  # red channel of the red class
    with pytest.warns(UserWarning):
        gray = ImageFolderDataset(str(tmp_path), size=(6, 8), color="gray", on_error="skip")
    assert gray.images.shape[1:] == (1, 6, 8)
    assert int(gray.images[0, 0, 0, 0]) == round(0.299 * 255)
    with pytest.warns(UserWarning):
        part = ImageFolderDataset(str(tmp_path), size=8, on_error="skip", split="train", split_fractions=(2, 1, 0))
    assert part.num_classes == 2
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "missing"))


@pytest.mark.parametrize("src,dst,color", [((105, 105, 1), (28, 28), "gray"), ((60, 80, 3), (28, 28), "gray"),
                                           ((30, 40, 4), (32, 24), "rgb"), ((300, 200, 3), (36, 36), "rgb")])
@pytest.mark.parametrize("resize_mode", ["squeeze", "letterbox", "center_crop"])
@pytest.mark.parametrize("antialias", [False, True])
def test_training_inputs_match_device_preprocess(rng, src, dst, color, resize_mode, antialias):
    """What training feeds the network == metaedge.kernels.preprocess on the raw image (up to the cache's
    uint8 rounding), for every resize policy, so a device enrolling raw images sees what training saw."""
    from metaedge.runtime.spec import PreprocessSpec
    from metaedge.train.data import cache_images
    n = 1 if color == "gray" else 3
    pre = PreprocessSpec(size=dst, color=color, invert=True, mean=(0.2,) * n, std=(0.5,) * n,
                         resize_mode=resize_mode, antialias=antialias)
    img = rng.integers(0, 256, size=src, dtype=np.uint8)
    device_input = pre.apply(img[None])
    training_input = FewShotDataset(cache_images([img], pre), [0], ["a"], pre).batch([0]).numpy()
    assert np.abs(device_input - training_input).max() <= 0.5 / 255 / 0.5 + 1e-6


def test_split_keeps_rotations_of_a_character_together():
    from metaedge.runtime.spec import PreprocessSpec
    names = [f"A/char{i}" for i in range(10)]
    names += [f"{n}/rot{deg}" for deg in (90, 180) for n in names[:10]]
    images = torch.zeros(len(names), 1, 2, 2, dtype=torch.uint8)
    ds = FewShotDataset(images, range(len(names)), names, PreprocessSpec(size=(2, 2), color="gray"))
    train, val = ds.split((0.7, 0.3), seed=0)
    base = lambda n: n.split("/rot")[0]  # noqa: E731
    assert not {base(n) for n in train.class_names} & {base(n) for n in val.class_names}
    assert val.num_classes == 9
