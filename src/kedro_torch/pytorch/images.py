"""Decoding image files of any kind into uint8 arrays of one shape, and checking them.

Plain PIL, NumPy and torchvision. One function, :func:`decode`, turns the bytes of a file into a
``(channels, size, size)`` uint8 array; the data-quality check, the cache and the
DataLoaders all call it, so a cached image is exactly the image a DataLoader would
have decoded itself.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import fsspec
import numpy as np
import torch
from fsspec.asyn import AsyncFileSystem
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

from kedro_torch.pytorch.config import ParameterError

# Transparent pixels are composited on white: scans, icons and logos with an alpha
# channel are drawn on white far more often than on black.
BACKGROUND = (255, 255, 255, 255)
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
SIXTEEN_BIT_MAX = 65535
TORCH_RESIZE_FROM = 96 * 96  # source pixels from which torch resizes faster than PIL
# The bound on reading one file over the network (http(s) and fsspec's other
# asynchronous filesystems), in seconds. An environment variable, not a parameter: the
# files are read in DataLoader workers, by the inference pipeline and by a served model
# too, and a bound on the network does not change what a run trains.
READ_TIMEOUT_VARIABLE = "KEDRO_TORCH_READ_TIMEOUT"
READ_TIMEOUT_S = 60.0

# A host that let a read time out is not asked again by this process for a while: a
# manifest of a thousand URLs on a host that hangs costs one bound, not a thousand.
SILENT_HOST_PAUSE_S = 300.0
_silent_hosts: dict[str, tuple[float, str]] = {}  # host -> (until, what timed out)


class ReadTimedOut(TimeoutError):
    """A file over the network that did not arrive within :func:`read_timeout`."""


@dataclass(frozen=True)
class FileCheck:
    """What decoding one file found: either ``pixels`` or the ``reason`` it failed."""

    reason: str | None = None
    missing: bool = False
    content_hash: str | None = None
    mode: str | None = None
    pixels: np.ndarray | None = None  # (channels, size, size) uint8
    pixel_sum: np.ndarray | None = None  # per channel, for the normalization statistics
    pixel_sumsq: np.ndarray | None = None


def read_bytes(path: str, end: int | None = None) -> bytes:
    """The whole file, or its first ``end`` bytes; plain paths skip fsspec's URL
    parsing, which costs per file.

    Over the network the read is one request (``cat_file``), given up after
    :func:`read_timeout` seconds with :class:`ReadTimedOut` naming the URL: fsspec's
    http filesystem would otherwise wait on a host that takes the connection and never
    answers for aiohttp's five minutes, twice (``open`` asks for the size first). A host
    that let a read time out is not asked again for a while. An HTTP status other than
    404 (which is a missing file) is an ``OSError`` naming the URL.
    """
    if "://" not in path:
        with open(path, "rb") as file:
            return file.read() if end is None else file.read(end)
    filesystem, inner = fsspec.core.url_to_fs(path)
    span = {} if end is None else {"start": 0, "end": end}
    if not isinstance(filesystem, AsyncFileSystem):
        return filesystem.cat_file(inner, **span)
    host = _host(path)
    until, earlier = _silent_hosts.get(host, (0.0, ""))
    if time.monotonic() < until:
        raise ReadTimedOut(f"{path}: not asked, {earlier}")
    seconds = read_timeout()
    try:
        # fsspec runs the request on its event loop and cancels it at the deadline.
        return filesystem.cat_file(inner, timeout=seconds, **span)
    except TimeoutError as error:  # fsspec's FSTimeoutError, aiohttp's ServerTimeoutError
        what = f"{host} did not send {path} within {seconds:g} s ({READ_TIMEOUT_VARIABLE})"
        _silent_hosts[host] = (time.monotonic() + SILENT_HOST_PAUSE_S, what)
        raise ReadTimedOut(what) from error
    except OSError:
        raise
    except Exception as error:  # aiohttp's ClientResponseError (a 500, ...) is no OSError
        raise OSError(f"{path}: {error}") from error


def read_timeout() -> float:
    """Seconds one read over the network may take: ``KEDRO_TORCH_READ_TIMEOUT``, else 60."""
    value = os.environ.get(READ_TIMEOUT_VARIABLE, "").strip()
    if not value:
        return READ_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ParameterError(f"{READ_TIMEOUT_VARIABLE} must be a number of seconds greater "
                             f"than 0, got {value!r}")
    return seconds


def _host(path: str) -> str:
    """``scheme://host:port`` of a URL (the bucket, for object stores)."""
    parts = urlsplit(path)
    return f"{parts.scheme}://{parts.netloc}"


def fingerprint(path: str) -> str:
    """Changes whenever the file changes: its path, size and modification time.

    Raises FileNotFoundError when there is no file.
    """
    if "://" not in path:
        status = os.stat(path)
        return f"{path}|{status.st_size}|{status.st_mtime_ns}"
    filesystem, inner = fsspec.core.url_to_fs(path)
    return f"{path}|{filesystem.ukey(inner)}"


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode(data: bytes, size: int, channels: int) -> tuple[np.ndarray, str]:
    """Bytes of an image file -> ``(channels, size, size)`` uint8 array and the file's mode.

    JPEGs are decoded straight at the smallest scale (1/2, 1/4, 1/8) that still covers
    ``size`` (``Image.draft``), which skips most of the decoding work for large photos.
    The EXIF orientation is applied, so phone photos are the right way up. Images
    are squashed to a square with an antialiased bilinear resize.
    """
    with Image.open(io.BytesIO(data)) as image:
        mode = image.mode
        if image.format == "JPEG":
            image.draft("L" if channels == 1 else "RGB", (size, size))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return squash(to_channels(image, channels), size), mode


def squash(image: Image.Image, size: int) -> np.ndarray:
    """An image in "L" or "RGB" -> ``(channels, size, size)`` uint8 array, resized as
    :func:`decode` resizes, so images given in memory match images read from files."""
    channels = len(image.getbands())
    if image.width * image.height >= TORCH_RESIZE_FROM:
        # torchvision's antialiased resize gives PIL's pixels at about twice the
        # speed on larger images; on small ones its per-call cost outweighs that.
        hwc = torch.from_numpy(np.array(image)).view(image.height, image.width, channels)
        chw = F.resize(hwc.permute(2, 0, 1).unsqueeze(0), [size, size], antialias=True)
        return chw[0].contiguous().numpy()
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image).reshape(size, size, channels)
    return np.array(pixels.transpose(2, 0, 1), order="C")  # writable, for torch


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> "L" (``channels=1``) or "RGB" (``channels=3``).

    PIL's own ``convert`` clips 16- and 32-bit integer pixels at 255, which turns a
    16-bit scan white, and drops alpha, which turns transparent pixels black; both
    are handled here before converting.
    """
    target = "L" if channels == 1 else "RGB"
    if image.mode == "I" or image.mode.startswith("I;16"):
        image = _integer_to_8_bits(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        image = _on_background(image)
    if image.mode == target:
        return image
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, 1, P, ...: through RGB
    return image.convert(target)


def _integer_to_8_bits(image: Image.Image) -> Image.Image:
    """Scale integer pixels to 0..255: 16-bit by 65535; 32-bit by 65535 when its values
    fit in 16 bits (PIL reads many 16-bit files as "I"), else by the image's maximum."""
    values = np.asarray(image).astype(np.float64)
    top = max(float(values.max(initial=0)), 1.0)
    scale = SIXTEEN_BIT_MAX if image.mode.startswith("I;16") or top <= SIXTEEN_BIT_MAX else top
    eight_bits = np.clip(np.rint(values * (255 / scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bits, mode="L")


def _on_background(image: Image.Image) -> Image.Image:
    if image.mode == "La":
        image = image.convert("LA")  # PIL has no La -> RGBA conversion
    background = Image.new("RGBA", image.size, BACKGROUND)
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def decode_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """An image already in memory (a torchvision dataset's sample, a caller's PIL image)
    -> ``(channels, size, size)`` uint8, turned the way its file would have been."""
    return squash(to_channels(ImageOps.exif_transpose(image), channels), size)


def check_file(path: str, size: int, channels: int, keep_pixels: bool) -> FileCheck:
    """Read and decode one file once; a file that fails is described, never raised."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return FileCheck(reason="no file at this path", missing=True)
    except OSError as error:
        return FileCheck(reason=f"cannot read: {error}")
    digest = content_hash(data)
    if not data:
        return FileCheck(reason="empty file (0 bytes)", content_hash=digest)
    return _checked(lambda: decode(data, size, channels), digest, channels, keep_pixels)


def check_image(image: Image.Image, size: int, channels: int, keep_pixels: bool) -> FileCheck:
    """:func:`check_file` for an image already in memory, which has no bytes of its own:
    its content hash is taken of its mode, size, palette and pixels."""
    palette = bytes(image.getpalette() or []) if image.mode == "P" else b""
    digest = content_hash(f"{image.mode}:{image.width}x{image.height}:".encode() + palette
                          + image.tobytes())
    return _checked(lambda: (decode_image(image, size, channels), image.mode), digest,
                    channels, keep_pixels)


def _checked(decoding: Callable[[], tuple[np.ndarray, str]], digest: str, channels: int,
             keep_pixels: bool) -> FileCheck:
    """Decoding untrusted bytes can fail in PIL with many exception types (OSError,
    SyntaxError, ValueError, struct.error, EOFError, ...), hence the broad catch: the
    point is to set the image aside and carry on."""
    try:
        pixels, mode = decoding()
    except Exception as error:
        return FileCheck(reason=decode_failure(error), content_hash=digest)
    pixel_sum, pixel_sumsq = pixel_sums(pixels)
    return FileCheck(content_hash=digest, mode=mode, pixels=pixels if keep_pixels else None,
                     pixel_sum=pixel_sum, pixel_sumsq=pixel_sumsq)


def pixel_sums(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the sum and the sum of squares of a ``(channels, ...)`` image's pixels:
    the training split's normalization statistics add these up image by image."""
    flat = pixels.reshape(pixels.shape[0], -1).astype(np.int64)
    return flat.sum(axis=1).astype(np.float64), (flat * flat).sum(axis=1).astype(np.float64)


def image_size_of(data: bytes) -> tuple[int, int]:
    """(width, height) of an image file's bytes, as its decoding turns it (EXIF)."""
    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.exif_transpose(image).size


def decode_each(files: Sequence[str | bytes], size: int, channels: int
                ) -> list[tuple[np.ndarray, tuple[int, int]] | str]:
    """Each image file (a path or its bytes) decoded as :func:`decode` does, with its own
    ``(width, height)``; or why it could not be read, so that one bad file of a batch to
    predict spoils no other."""
    results: list[tuple[np.ndarray, tuple[int, int]] | str] = []
    for file in files:
        try:
            data = file if isinstance(file, bytes) else read_bytes(file)
        except OSError as error:
            results.append(f"cannot read: {error}")
            continue
        try:
            results.append((decode(data, size, channels)[0], image_size_of(data)))
        except Exception as error:  # PIL fails in many ways on broken files
            results.append(decode_failure(error))
    return results


def decode_failure(error: Exception) -> str:
    """Why PIL could not read an image, as the data-quality report says it."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image: PIL cannot identify it"
    if isinstance(error, Image.DecompressionBombError):
        return f"too large to decode safely: {error}"
    return f"cannot decode: {error}"


class ImageSource(Protocol):
    """What reads a manifest's paths: fingerprints them for the disk cache, checks each
    once, and decodes it for the DataLoaders. Image files are one source
    (:data:`FILES`), a torchvision dataset's samples another
    (:class:`~kedro_torch.pytorch.torchvision_data.TorchvisionSamples`); checking,
    caching and loading take either, so they have one code path."""

    def fingerprint(self, path: str) -> str: ...

    def check(self, path: str, size: int, channels: int, keep_pixels: bool) -> FileCheck: ...

    def decode(self, path: str, size: int, channels: int) -> np.ndarray: ...


class ImageFiles:
    """Manifest paths that name image files (any fsspec URL)."""

    def fingerprint(self, path: str) -> str:
        return fingerprint(path)

    def check(self, path: str, size: int, channels: int, keep_pixels: bool) -> FileCheck:
        return check_file(path, size, channels, keep_pixels)

    def decode(self, path: str, size: int, channels: int) -> np.ndarray:
        return decode(read_bytes(path), size, channels)[0]


FILES = ImageFiles()
