"""Write a small synthetic object-detection set: shapes on textured backgrounds, boxed.

Run once to (re)create ``data/01_raw/shapes_detection/images/<id>.png`` (RGB, 128x128)
and ``annotations.json`` (COCO: images, annotations with ``bbox`` [x, y, width, height]
in pixels, categories 1 circle, 2 square, 3 triangle); the files are committed so that a
detection run needs no download. The shapes are drawn as write_shapes_segmentation.py
draws them, at twice its size: 2-5 per image, random class, size, place, rotation and
colour on a gradient with stripes and noise, a later shape never hiding much of an
earlier one. Each box bounds the shape's visible pixels, so that a box never claims
what another shape hides. The first shape of some images is drawn much larger, so that
the set holds small, medium and large objects as COCO sorts them (box area below 32^2,
below 96^2, above). Lighter noise and coarser levels than the segmentation set's keep
the larger PNG files small. The seed is fixed: a rerun writes the same bytes.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from write_shapes_segmentation import (
    CIRCLE,
    RADIUS,
    SQUARE,
    TRIANGLE,
    background,
    finish,
    place_shapes,
)

SIZE = 128
COUNT = 320
CATEGORIES = {CIRCLE: "circle", SQUARE: "square", TRIANGLE: "triangle"}
SCALED_RADIUS = {label: (2 * low, 2 * high) for label, (low, high) in RADIUS.items()}
# A radius range whose shapes nearly fill the image: boxes above 96^2 pixels, for the
# circles and the turned squares and triangles.
LARGE_RADIUS = dict.fromkeys(CATEGORIES, (48, 63))
LARGE_SHARE = 0.2  # the share of images whose first shape is drawn large
SHAPES_PER_IMAGE = (2, 5)
NOISE, LEVEL_STEP = 2, 16


def main(out_dir: Path = Path(__file__).parent / "shapes_detection", count: int = COUNT
         ) -> None:
    rng = np.random.default_rng(2025)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        image = background(rng, SIZE)
        wanted = int(rng.integers(SHAPES_PER_IMAGE[0], SHAPES_PER_IMAGE[1] + 1))
        first = LARGE_RADIUS if rng.random() < LARGE_SHARE else SCALED_RADIUS
        objects = place_shapes(rng, image, [first] + [SCALED_RADIUS] * (wanted - 1))
        file_name = f"{image_id:04d}.png"
        Image.fromarray(finish(rng, image, NOISE, LEVEL_STEP)).save(
            out_dir / "images" / file_name, optimize=True)
        images.append({"id": image_id, "file_name": file_name, "width": SIZE, "height": SIZE})
        for label, visible in objects:
            ys, xs = np.nonzero(visible)
            x, y = int(xs.min()), int(ys.min())
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                "bbox": [x, y, int(xs.max()) + 1 - x, int(ys.max()) + 1 - y],
                "area": int(visible.sum()), "iscrowd": 0,
            })
    categories = [{"id": label, "name": name} for label, name in CATEGORIES.items()]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    # One image, annotation or category a line, keys sorted: a rewrite diffs line by line.
    lists = []
    for key, items in sorted(coco.items()):
        rows = ",\n".join(f"  {json.dumps(item, sort_keys=True)}" for item in items)
        lists.append(f' "{key}": [\n{rows}\n ]')
    (out_dir / "annotations.json").write_text("{\n" + ",\n".join(lists) + "\n}\n")


if __name__ == "__main__":
    main()
