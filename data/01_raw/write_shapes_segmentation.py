"""Write a small synthetic semantic-segmentation set: shapes on textured backgrounds.

Run once to (re)create ``data/01_raw/shapes_segmentation/images/<index>.png`` (RGB,
64x64) and ``masks/<index>.png`` (one "L" channel of class indices, same stem and
size); the files are committed so that a segmentation run needs no download. Classes:
0 background, 1 circle, 2 square, 3 triangle. Each image holds 1-4 shapes of random
class, size, place, rotation and colour on a background of a colour gradient, stripes
and noise. The colour is never tied to the class, so a model has to learn the outline;
it is only kept apart from what lies beneath, so that the outline can be seen. A later
shape paints over an earlier one, in the mask as in the image, but never hides much of
it. The seed is fixed: a rerun writes the same bytes. The drawing functions take the
image's size, so that write_shapes_detection.py draws its larger images the same way.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COUNT = 320
CIRCLE, SQUARE, TRIANGLE = 1, 2, 3
# The radius of a circle, or of the circle through a square's corners or a triangle's:
# about the same area for each class, so that none is rare among the pixels.
RADIUS = {CIRCLE: (7, 13), SQUARE: (9, 16), TRIANGLE: (10, 18)}
SHAPES_PER_IMAGE = (1, 4)
UPRIGHT = 2 / 3  # the share of squares and triangles not turned
MIN_CONTRAST = 90  # RGB distance between a shape's colour and the mean colour it covers
MAX_HIDDEN = 0.25  # the most of an earlier shape's visible pixels a later one may cover
STRIPES = 25  # the stripes' largest amplitude, in grey levels
NOISE, LEVEL_STEP = 4, 8  # noise sd; levels kept a step apart so the PNG files stay small


def main(out_dir: Path = Path(__file__).parent / "shapes_segmentation") -> None:
    rng = np.random.default_rng(2024)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(COUNT):
        image = background(rng, SIZE)
        wanted = int(rng.integers(SHAPES_PER_IMAGE[0], SHAPES_PER_IMAGE[1] + 1))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for label, visible in place_shapes(rng, image, [RADIUS] * wanted):
            mask[visible] = label
        Image.fromarray(finish(rng, image)).save(out_dir / "images" / f"{index:04d}.png",
                                                 optimize=True)
        Image.fromarray(mask).save(out_dir / "masks" / f"{index:04d}.png", optimize=True)


def place_shapes(rng: np.random.Generator, image: np.ndarray,
                 radii: list[dict[int, tuple[float, float]]]) -> list[tuple[int, np.ndarray]]:
    """Paints up to ``len(radii)`` shapes into ``image``, the n-th with a radius from
    ``radii[n]`` for its class, and returns each one's class and visible pixels. A
    placement that would hide too much of an earlier shape is redrawn, 50 times at
    most, so that a crowded image may hold fewer."""
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(50):
        if len(objects) == len(radii):
            break
        label = int(rng.integers(1, 4))
        region = shape(rng, label, image.shape[0], radii[len(objects)][label])
        if any((seen & region).sum() > MAX_HIDDEN * seen.sum() for _, seen in objects):
            continue
        image[region] = colour(rng, image[region].mean(axis=0))
        objects = [(kept, seen & ~region) for kept, seen in objects] + [(label, region)]
    return objects


def finish(rng: np.random.Generator, image: np.ndarray, noise: float = NOISE,
           level_step: int = LEVEL_STEP) -> np.ndarray:
    """The painted image with noise of sd ``noise``, as uint8 levels ``level_step``
    apart: the fewer levels, the smaller the PNG file."""
    noisy = image + rng.normal(0, noise, size=image.shape)
    return np.clip(np.rint(noisy / level_step) * level_step, 0, 255).astype(np.uint8)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``size`` x ``size`` gradient between two colours in a random direction, with
    faint stripes."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    start, end = rng.uniform(0, 255, size=(2, 3))
    image = start + ramp[..., None] * (end - start)
    stripe_angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20)
    phase = (np.cos(stripe_angle) * x + np.sin(stripe_angle) * y) * (size - 1) / period
    image += rng.uniform(0, STRIPES) * np.sin(2 * np.pi * phase)[..., None]
    return np.clip(image, 0, 255)


def shape(rng: np.random.Generator, label: int, size: int,
          radius_range: tuple[float, float]) -> np.ndarray:
    """The pixels of one shape of class ``label``, drawn where it fits in a ``size`` x
    ``size`` image."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    radius = rng.uniform(*radius_range)
    cx, cy = rng.uniform(radius, size - 1 - radius, size=2)
    if label == CIRCLE:
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    else:
        sides = 4 if label == SQUARE else 3
        upright = np.pi / 4 if label == SQUARE else -np.pi / 2
        turn = upright if rng.random() < UPRIGHT else rng.uniform(0, 2 * np.pi)
        angles = turn + 2 * np.pi * np.arange(sides) / sides
        draw.polygon([(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles],
                     fill=1)
    return np.asarray(canvas, dtype=bool)


def colour(rng: np.random.Generator, beneath: np.ndarray) -> np.ndarray:
    """A random colour far enough from ``beneath`` for the outline to show."""
    while True:
        candidate = rng.uniform(0, 255, size=3)
        if np.linalg.norm(candidate - beneath) >= MIN_CONTRAST:
            return candidate


if __name__ == "__main__":
    main()
