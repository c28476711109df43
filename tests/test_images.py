"""`mage.images`: real photos of every mode -> upright 8-bit RGB, LLaVA's square padding, and
the vision tower's preprocessing through them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from real_photos import LARGE_SIDE, open_photo, photo_bytes, source

from mage.images import MAX_SIDE, expand2square, mean_color, open_image, prepare_image, to_rgb

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def photos():
    return photo_bytes()


def _mean_abs(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def test_every_photo_mode_becomes_8_bit_rgb(photos):
    modes = {name: open_photo(data).mode for name, data in photos.items()}
    assert modes == {
        "rgb": "RGB",
        "grey": "L",
        "rgba": "RGBA",
        "palette": "P",
        "cmyk": "CMYK",
        "sixteen_bit": "I;16",
        "exif_rotated": "RGB",
        "large": "RGB",
    }
    for name, data in photos.items():
        rgb = to_rgb(open_photo(data))
        assert rgb.mode == "RGB" and max(rgb.size) <= MAX_SIDE, name


def test_sixteen_bit_is_scaled_not_saturated(photos):
    hopper = source("hopper").convert("L").convert("RGB")
    photo = open_photo(photos["sixteen_bit"])
    assert np.asarray(photo.convert("RGB")).mean() > 250  # what convert("RGB") does: white
    assert _mean_abs(to_rgb(photo), hopper) == 0.0  # x257 then /257: the 8-bit photo back


def test_transparency_is_composited_on_the_background(photos):
    present = open_photo(photos["rgba"])
    alpha = np.asarray(present)[..., 3]
    clear, solid = alpha == 0, alpha == 255
    assert clear.any() and solid.any()
    green = np.asarray(to_rgb(present, background=(0, 255, 0)))
    assert (green[clear] == (0, 255, 0)).all()
    assert (green[solid] == np.asarray(present)[..., :3][solid]).all()
    palette = open_photo(photos["palette"])
    index = np.asarray(palette)
    white = np.asarray(to_rgb(palette))
    assert (white[index == 0] == 255).all() and (index == 0).any()


def test_exif_rotation_and_cmyk_and_greyscale(photos):
    china, flower, hopper = source("china"), source("flower"), source("hopper")
    upright = to_rgb(open_photo(photos["exif_rotated"]))
    assert upright.size == china.size and _mean_abs(upright, china) < 4
    assert _mean_abs(to_rgb(open_photo(photos["cmyk"])), flower) < 4
    grey = np.asarray(to_rgb(open_photo(photos["grey"])))
    assert (grey[..., 0] == np.asarray(hopper.convert("L"))).all()
    assert (grey[..., 0] == grey[..., 2]).all()


def test_a_large_photo_is_reduced_once_and_keeps_its_shape(photos):
    photo = open_photo(photos["large"])
    assert max(photo.size) == LARGE_SIDE
    rgb = to_rgb(photo)
    assert max(rgb.size) <= MAX_SIDE
    assert abs(rgb.width / rgb.height - photo.width / photo.height) < 0.01


def test_an_upright_rgb_image_is_returned_as_is(photos):
    image = Image.new("RGB", (64, 64), (1, 2, 3))
    assert to_rgb(image) is image and prepare_image(image, "pad") is image
    path_image = open_image(__import__("real_photos").SOURCES["china"])
    assert path_image.mode == "RGB" and path_image.size == source("china").size


def test_expand2square_is_llavas():
    image = Image.new("RGB", (6, 2), (200, 0, 0))
    square = expand2square(image, (1, 2, 3))
    assert square.size == (6, 6)
    pixels = np.asarray(square)
    assert (pixels[2:4] == (200, 0, 0)).all() and (pixels[:2] == (1, 2, 3)).all()
    tall = expand2square(Image.new("RGB", (3, 8), (9, 9, 9)), (0, 0, 0))
    assert tall.size == (8, 8) and np.asarray(tall)[:, 2:5].min() == 9  # (8 - 3) // 2 = 2
    assert mean_color((0.48145466, 0.4578275, 0.40821073)) == (122, 116, 104)  # LLaVA's CLIP
    with pytest.raises(ValueError, match="aspect"):
        prepare_image(image, "stretch")


def test_the_tower_pads_non_square_photos_with_its_mean_colour(photos):
    from mage.registry import ENCODERS
    from mage.vision import build_vision_tower

    tower = build_vision_tower(ENCODERS["tiny-vit-random"])
    photo = open_photo(photos["rgba"]).crop((0, 0, 128, 64))  # non-square, with alpha
    pixels = tower.preprocess([photo])
    fill = mean_color(next(t.mean for t in tower._transform.transforms if hasattr(t, "mean")))
    by_hand = tower._transform(expand2square(to_rgb(photo), fill))
    assert torch.equal(pixels[0], by_hand)
    sixteen = tower.preprocess([open_photo(photos["sixteen_bit"])])
    eight = tower.preprocess([source("hopper").convert("L")])
    assert torch.allclose(sixteen, eight)


@pytest.mark.parametrize("mode", ["P", "1", "I;16"])
def test_a_large_image_in_a_mode_pillow_cannot_reduce_is_converted_then_reduced(mode):
    """Pillow's reduce refuses palette, 1-bit and 16-bit images: one such benchmark image
    wider than MAX_SIDE ended the whole evaluation."""
    rgb = to_rgb(Image.new(mode, (MAX_SIDE + 904, 8)))
    assert rgb.mode == "RGB" and max(rgb.size) <= MAX_SIDE


def test_training_reads_an_image_as_evaluation_does(tmp_path):
    """The training dataset and the evaluation path convert the same way: transparency on
    white, 16-bit scaled (`Image.convert("RGB")` kept the hidden pixels and saturated)."""
    import json

    from mage.config import DataSource
    from mage.data import ConversationDataset

    rgba = Image.new("RGBA", (8, 8), (10, 200, 30, 0))  # fully transparent green
    rgba.save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16)).save(tmp_path / "b.png")
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]
    records = [{"id": n, "image": f"{n}.png", "conversations": turns} for n in ("a", "b")]
    (tmp_path / "d.json").write_text(json.dumps(records))
    dataset = ConversationDataset([DataSource(path=str(tmp_path / "d.json"))],
                                  records_dir=tmp_path / "records")  # fmt: skip
    for i, name in enumerate(("a", "b")):
        trained = dataset.load_image(dataset.record(i))
        evaluated = to_rgb(Image.open(tmp_path / f"{name}.png"))
        assert np.array_equal(np.asarray(trained), np.asarray(evaluated)), name
    assert np.asarray(dataset.load_image(dataset.record(0)))[0, 0].tolist() == [255, 255, 255]
