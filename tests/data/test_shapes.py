"""The shapes world: determinism, splits, captions, rendered colours and argument errors."""

import random

import numpy as np
import pytest

from torchflava.data.samples import Sample
from torchflava.data.shapes import ALL_SCENES, CLASS_NAMES, COLOURS, PLACES, SHAPES, SIZES, Scene, ShapesWorld, render


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def test_scene_tables_and_caption_wordings():
    assert len(ALL_SCENES) == len(SHAPES) * len(COLOURS) * len(SIZES) * len(PLACES) == 540
    assert len(set(ALL_SCENES)) == 540
    assert len(CLASS_NAMES) == 30 and len(set(CLASS_NAMES)) == 30
    assert CLASS_NAMES[:2] == ("red circle", "green circle") and CLASS_NAMES[-1] == "orange cross"
    scene = Scene("circle", "red", "large", "in the top left")
    assert scene.caption() == "a large red circle in the top left"
    assert scene.caption(1) == "in the top left there is a large red circle"
    assert scene.caption(2) == "a red circle in the top left, large"
    assert scene.caption(3) == "the circle in the top left is red and large"
    assert scene.caption(5) == scene.caption(1)  # the wording index wraps around
    assert scene.label == "red circle"
    assert {s.label for s in ALL_SCENES} == set(CLASS_NAMES)


def test_same_seed_same_items_in_a_fresh_instance():
    first, again = (ShapesWorld("pairs", 6, image_size=24, seed=3) for _ in range(2))
    for i in range(6):
        a, b = first[i], again[i]
        assert isinstance(a, Sample)
        assert a.text == b.text
        assert np.array_equal(pixels(a.image), pixels(b.image))
        # Reading an item twice from the same instance gives it again (no hidden state).
        assert np.array_equal(pixels(first[i].image), pixels(a.image))


def test_other_seed_or_split_gives_other_items():
    base = ShapesWorld("pairs", 20, image_size=24, seed=3)
    other = ShapesWorld("pairs", 20, image_size=24, seed=4)
    images = ShapesWorld("images", 20, image_size=24, seed=3)
    differ_seed = sum(not np.array_equal(pixels(base[i].image), pixels(other[i].image)) for i in range(20))
    differ_split = sum(not np.array_equal(pixels(base[i].image), pixels(images[i].image)) for i in range(20))
    assert differ_seed == 20 and differ_split == 20
    # Scenes too, not just the jitter: 540 scenes make an accidental match rare.
    assert sum(base.scene(i) != other.scene(i) for i in range(20)) >= 18
    assert [base.caption(i) for i in range(20)] != [other.caption(i) for i in range(20)]


@pytest.mark.parametrize("split", ["pairs", "texts", "test"])
def test_caption_is_the_item_text(split):
    world = ShapesWorld(split, 30, image_size=16, seed=7)
    for i in range(30):
        assert world.caption(i) == world[i].text


def test_captions_name_all_four_attributes_in_varied_wordings():
    world = ShapesWorld("texts", 40, seed=1)
    wordings = []
    for i in range(40):
        scene, text = world.scene(i), world[i].text
        matches = [t for t in range(4) if scene.caption(t) == text]
        assert len(matches) == 1, text
        wordings.append(matches[0])
        for attribute in scene:
            assert attribute in text
    assert set(wordings) == {0, 1, 2, 3}


def test_split_fields():
    images = ShapesWorld("images", 3, image_size=20)
    texts = ShapesWorld("texts", 3, image_size=20)
    pairs = ShapesWorld("pairs", 3, image_size=20)
    for i in range(3):
        assert images[i].text is None and images[i].image.size == (20, 20) and images[i].image.mode == "RGB"
        assert texts[i].image is None and isinstance(texts[i].text, str) and texts[i].text
        assert pairs[i].image.size == (20, 20) and isinstance(pairs[i].text, str)
    assert len(images) == 3


def test_test_split_has_one_item_per_scene_with_unique_captions():
    full = ShapesWorld("test", len(ALL_SCENES), image_size=16, seed=0)
    scenes = [full.scene(i) for i in range(len(full))]
    captions = [full.caption(i) for i in range(len(full))]
    assert set(scenes) == set(ALL_SCENES)
    assert len(set(captions)) == 540
    assert captions == [s.caption(0) for s in scenes]  # canonical wording only
    assert scenes != list(ALL_SCENES)  # shuffled, not in table order
    # A shorter test split is the start of the same order, and the order depends on the seed.
    short = ShapesWorld("test", 10, image_size=16, seed=0)
    assert [short.scene(i) for i in range(10)] == scenes[:10]
    assert [ShapesWorld("test", 10, seed=1).scene(i) for i in range(10)] != scenes[:10]
    item = full[5]
    assert item.text == captions[5] and item.image.size == (16, 16)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("colour", list(COLOURS))
def test_shape_centre_has_the_named_colour(shape, colour):
    for seed in range(3):
        image = render(Scene(shape, colour, "large", "in the middle"), 96, random.Random(seed))
        assert image.size == (96, 96) and image.mode == "RGB"
        centre = pixels(image)[48, 48]
        # The fill is the named colour jittered by at most 20 per channel (then clipped to [0, 255]).
        assert np.abs(centre - np.array(COLOURS[colour])).max() <= 20, (seed, centre)
        # A corner is background: a dark grey with blue within 10 of the others.
        r, g, b = pixels(image)[0, 0]
        assert r == g and 20 <= r <= 70 and abs(int(b) - int(r)) <= 10


def test_place_puts_the_shape_in_its_cell():
    for seed in range(3):
        image = pixels(render(Scene("square", "blue", "small", "in the bottom right"), 96, random.Random(seed)))
        assert np.abs(image[80, 80] - np.array(COLOURS["blue"])).max() <= 20  # centre of the bottom-right cell
        for y, x in ((16, 16), (48, 48), (16, 80)):
            assert image[y, x][0] == image[y, x][1]  # background grey elsewhere


def test_render_is_a_function_of_the_rng():
    scene = Scene("diamond", "purple", "small", "at the top")
    a = render(scene, 40, random.Random(11))
    b = render(scene, 40, random.Random(11))
    c = render(scene, 40, random.Random(12))
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


@pytest.mark.parametrize(
    "split, length, image_size, match",
    [
        ("train", 5, 16, "split"),
        ("test", 541, 16, "length"),
        ("test", 0, 16, "length"),
        ("pairs", 0, 16, "length"),
        ("pairs", -2, 16, "length"),
        ("pairs", 3.0, 16, "length"),
        ("pairs", "3", 16, "length"),
        ("pairs", 3, 7, "image_size"),
        ("pairs", 3, 16.0, "image_size"),
    ],
)
def test_bad_arguments(split, length, image_size, match):
    with pytest.raises(ValueError, match=match):
        ShapesWorld(split, length, image_size=image_size)


def test_limits_that_are_allowed():
    assert len(ShapesWorld("test", 540)) == 540
    assert len(ShapesWorld("pairs", 10_000)) == 10_000  # no upper limit outside "test"
    assert ShapesWorld("images", 1, image_size=8)[0].image.size == (8, 8)


def test_index_out_of_range():
    world = ShapesWorld("pairs", 5, image_size=16)
    for bad in (5, 6, -1):
        with pytest.raises(IndexError, match=str(bad)):
            world[bad]
        with pytest.raises(IndexError):
            world.caption(bad)
        with pytest.raises(IndexError):
            world.scene(bad)
    test = ShapesWorld("test", 4)
    with pytest.raises(IndexError, match="4"):
        test.scene(4)
