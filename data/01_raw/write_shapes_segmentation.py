"""Write a small synthetic semantic-segmentation set: shapes on textured backgrounds.

Run once to (re)create ``data/01_raw/shapes_segmentation/images/<index>.png`` (RGB,
64x64) and ``masks/<index>.png`` (one "L" channel of class indices, same stem and
size); the files are committed so that a segmentation run needs no download. Classes:
0 background, 1 circle, 2 square, 3 triangle. Each image holds 1-4 shapes of random
class, size, place, rotation and colour on a background of a colour gradient, stripes
and noise. The colour is never tied to the class, so a model has to learn the outline;
it is only kept apart from what lies beneath, so that the outline can be seen. A later
shape paints over an earlier one, in the mask as in the image, but never hides much of
it. The seed is fixed: a rerun writes the same bytes.
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
        image, mask = _sample(rng)
        Image.fromarray(image).save(out_dir / "images" / f"{index:04d}.png", optimize=True)
        Image.fromarray(mask).save(out_dir / "masks" / f"{index:04d}.png", optimize=True)


def _sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = _background(rng)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    objects: list[np.ndarray] = []  # each shape's visible pixels so far
    wanted = int(rng.integers(SHAPES_PER_IMAGE[0], SHAPES_PER_IMAGE[1] + 1))
    for _ in range(50):  # placements that hide too much of an earlier shape are redrawn
        if len(objects) == wanted:
            break
        label = int(rng.integers(1, 4))
        region = _shape(rng, label)
        if any((seen & region).sum() > MAX_HIDDEN * seen.sum() for seen in objects):
            continue
        image[region] = _colour(rng, image[region].mean(axis=0))
        mask[region] = label
        objects = [seen & ~region for seen in objects] + [region]
    noisy = image + rng.normal(0, NOISE, size=image.shape)
    return (np.clip(np.rint(noisy / LEVEL_STEP) * LEVEL_STEP, 0, 255).astype(np.uint8),
            mask)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A gradient between two colours in a random direction, with faint stripes."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    start, end = rng.uniform(0, 255, size=(2, 3))
    image = start + ramp[..., None] * (end - start)
    stripe_angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20)
    phase = (np.cos(stripe_angle) * x + np.sin(stripe_angle) * y) * (SIZE - 1) / period
    image += rng.uniform(0, STRIPES) * np.sin(2 * np.pi * phase)[..., None]
    return np.clip(image, 0, 255)


def _shape(rng: np.random.Generator, label: int) -> np.ndarray:
    """The pixels of one shape of class ``label``, drawn where it fits in the image."""
    canvas = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    radius = rng.uniform(*RADIUS[label])
    cx, cy = rng.uniform(radius, SIZE - 1 - radius, size=2)
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


def _colour(rng: np.random.Generator, beneath: np.ndarray) -> np.ndarray:
    """A random colour far enough from ``beneath`` for the outline to show."""
    while True:
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - beneath) >= MIN_CONTRAST:
            return colour


if __name__ == "__main__":
    main()
