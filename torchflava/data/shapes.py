"""The built-in data: a procedurally generated world of coloured shapes and their captions.

Each scene is one shape of a given kind, colour and size at one of nine places on a plain
background, drawn with small random jitter; its caption names all four attributes ("a large red
circle in the top left"). Scenes are a pure function of (seed, split, index): nothing is
downloaded or stored, every run and every rank sees the same data, and the held-out ``"test"``
split never shares a random stream with the training splits.

Splits:

* ``"pairs"``: image + caption;
* ``"images"``: image only;
* ``"texts"``: caption only (with varied wording);
* ``"test"``: image + caption, one scene per distinct attribute combination (so captions are
  unique and retrieval has exactly one right answer), in a seeded order.
"""

import itertools
import random
from typing import NamedTuple

from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from torchflava.data.samples import Sample

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SIZES = {"small": 0.2, "large": 0.32}  # shape radius as a fraction of the image side
PLACES = {
    "in the top left": (0, 0),
    "at the top": (1, 0),
    "in the top right": (2, 0),
    "on the left": (0, 1),
    "in the middle": (1, 1),
    "on the right": (2, 1),
    "in the bottom left": (0, 2),
    "at the bottom": (1, 2),
    "in the bottom right": (2, 2),
}
SPLITS = ("pairs", "images", "texts", "test")
_TEMPLATES = (
    "a {size} {colour} {shape} {place}",
    "{place} there is a {size} {colour} {shape}",
    "a {colour} {shape} {place}, {size}",
    "the {shape} {place} is {colour} and {size}",
)


class Scene(NamedTuple):
    """The attributes of one scene."""

    shape: str
    colour: str
    size: str
    place: str

    def caption(self, template: int = 0) -> str:
        """The scene's caption in one of the wordings (0 is the canonical one)."""
        return _TEMPLATES[template % len(_TEMPLATES)].format(**self._asdict())

    @property
    def label(self) -> str:
        """The colour-shape class, e.g. ``"red circle"`` (the zero-shot classification target)."""
        return f"{self.colour} {self.shape}"


ALL_SCENES = tuple(Scene(*combo) for combo in itertools.product(SHAPES, COLOURS, SIZES, PLACES))
CLASS_NAMES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)


def render(scene: Scene, image_size: int, rng: random.Random) -> Image.Image:
    """Draw ``scene`` on an ``image_size`` square RGB image with jittered placement and shade.

    Args:
        scene (Scene): what to draw.
        image_size (int): side in pixels.
        rng (random.Random): source of the jitter.

    Returns:
        Image.Image: the RGB image.
    """
    shade = rng.randint(20, 70)
    image = Image.new("RGB", (image_size, image_size), (shade, shade, shade + rng.randint(-10, 10)))
    draw = ImageDraw.Draw(image)
    radius = SIZES[scene.size] * image_size * rng.uniform(0.85, 1.15)
    column, row = PLACES[scene.place]
    cell = image_size / 3
    cx = (column + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
    cy = (row + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
    colour = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[scene.colour])
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if scene.shape == "circle":
        draw.ellipse(box, fill=colour)
    elif scene.shape == "square":
        draw.rectangle((cx - 0.85 * radius, cy - 0.85 * radius, cx + 0.85 * radius, cy + 0.85 * radius), fill=colour)
    elif scene.shape == "triangle":
        draw.polygon(
            [(cx, cy - radius), (cx + radius, cy + 0.8 * radius), (cx - radius, cy + 0.8 * radius)], fill=colour
        )
    elif scene.shape == "diamond":
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=colour)
    else:  # cross
        arm = 0.35 * radius
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=colour)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=colour)
    return image


# The most items a split may have (samplers hold a permutation of a source's items: 8 bytes each).
MAX_LENGTH = 10**8


class ShapesWorld(Dataset):
    """One split of the shapes world as a map-style dataset of :class:`Sample`.

    Args:
        split (str): ``"pairs"``, ``"images"``, ``"texts"`` or ``"test"``.
        length (int): number of items; at most ``len(ALL_SCENES)`` for ``"test"``.
        image_size (int): rendered side in pixels (the transforms resize it for the model).
        seed (int): world seed; the same seed gives the same items.

    Raises:
        ValueError: if ``split`` is unknown, or ``length``/``image_size`` is out of range.
    """

    def __init__(self, split: str, length: int, *, image_size: int = 64, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        limit = len(ALL_SCENES) if split == "test" else MAX_LENGTH
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= limit:
            raise ValueError(f"length must be an int in [1, {limit}] for split {split!r}, got {length!r}")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        self.split, self.length, self.image_size, self.seed = split, length, image_size, seed
        self._order = None
        if split == "test":
            self._order = list(range(len(ALL_SCENES)))
            random.Random(f"{seed}/test-order").shuffle(self._order)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        """The attributes of item ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a split of {self.length}")
        if self._order is not None:
            return ALL_SCENES[self._order[index]]
        return ALL_SCENES[random.Random(f"{self.seed}/{self.split}/{index}/scene").randrange(len(ALL_SCENES))]

    def caption(self, index: int) -> str:
        """The caption of item ``index`` without drawing its image."""
        rng = random.Random(f"{self.seed}/{self.split}/{index}/draw")
        return self.scene(index).caption(0 if self.split == "test" else rng.randrange(len(_TEMPLATES)))

    def __getitem__(self, index: int) -> Sample:
        scene = self.scene(index)
        rng = random.Random(f"{self.seed}/{self.split}/{index}/draw")
        template = 0 if self.split == "test" else rng.randrange(len(_TEMPLATES))
        image = None if self.split == "texts" else render(scene, self.image_size, rng)
        text = None if self.split == "images" else scene.caption(template)
        return Sample(image=image, text=text)
