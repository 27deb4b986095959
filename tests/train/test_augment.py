"""Augmentation presets: seeded, in range, per domain; the stroke-width filter is a 3x3 max/min pool."""
import pytest
import torch
import torch.nn.functional as F

from metaedge.train.augment import PRESETS, Augment, _filter3x3, make_augment, preset_for


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_are_seeded_and_keep_pixels_in_range(name, channels):
    x = torch.rand(16, channels, 20, 20)
    aug = make_augment(name)
    if name == "none":
        assert aug is None
        return
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = aug(x, generator=torch.Generator().manual_seed(3))
    c = aug(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    assert float(a.min()) >= -1e-6 and float(a.max()) <= 1 + 1e-6


def test_auto_picks_the_domain_preset_and_bad_specs_are_named():
    assert preset_for(1) == "glyphs" and preset_for(3) == "natural"
    assert make_augment("auto", channels=1) == make_augment("glyphs")
    assert make_augment("auto", channels=3) == make_augment("natural")
    with pytest.raises(ValueError, match="channels"):
        make_augment("auto")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['zoom'\]"):
        make_augment({"zoom": 2})
    assert make_augment({"scale": [1, 2], "hflip": True}) == Augment(scale=(1, 2), hflip=True)
    assert make_augment({}) is None


def test_stroke_width_filter_is_a_3x3_max_and_min_pool():
    x = torch.rand(4, 2, 9, 7)
    assert torch.equal(_filter3x3(x, torch.maximum), F.max_pool2d(x, 3, 1, 1))
    assert torch.equal(_filter3x3(x, torch.minimum), -F.max_pool2d(-x, 3, 1, 1))


def test_erasing_fills_with_the_background_and_crops_stay_inside():
    x = torch.zeros(64, 1, 24, 24)
    x[:, :, 8:16, 8:16] = 1.0                          # a glyph on a black background
    erased = Augment(erase=1.0)(x, generator=torch.Generator().manual_seed(0))
    assert float(erased.sum()) < float(x.sum())         # strokes removed, no grey patches added
    assert set(erased.unique().tolist()) <= {0.0, 1.0}
    photo = torch.rand(32, 3, 24, 24)
    crops = Augment(scale=(2.0, 2.0), crop=True)(photo, generator=torch.Generator().manual_seed(0))
    assert float(crops.std()) > 0.5 * float(photo.std())   # a zoomed window of the image, not its padded border
