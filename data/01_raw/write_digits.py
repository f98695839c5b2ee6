"""Write scikit-learn's copy of the UCI handwritten digits as PNG files.

Run once to (re)create ``data/01_raw/digits/<digit>/<index>.png``; the files are
committed so that a default run needs neither scikit-learn nor a network. The
8x8 images hold values 0..16, stretched here to the full 0..255 grey range.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(out_dir: Path = Path(__file__).parent / "digits") -> None:
    digits = load_digits()
    for index, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = np.rint(image * (255 / 16)).astype(np.uint8)
        class_dir = out_dir / str(target)
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(class_dir / f"{index:04d}.png")


if __name__ == "__main__":
    main()
