"""Image files as rows: a folder of PNG/JPEG images and a labels CSV, read with Pillow.

Each image is converted to the configured channels (1: grey, 3: RGB; notes ch. 3), resized
to the configured square size, optionally inverted (dark strokes on light paper become high
values, as in the training data) and scaled to 0..`max_pixel`. A row is the file's path
relative to the folder (`id`), its `label` and one column per pixel value, so images go
through validation and the DVC snapshot like any other rows. A file that is missing or not
a readable PNG/JPEG becomes a row with empty pixels, which validation quarantines with
the reason (never a silent drop).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from loopline.errors import SourceError

if TYPE_CHECKING:
    from loopline.offline.features import FeatureSpec

log = logging.getLogger("loopline.tasks.image.images")

# MPO: the JPEG variant many phone cameras write (a JPEG with extra frames).
FORMATS = ("PNG", "JPEG", "MPO")
MODES = {1: "L", 3: "RGB"}


def pixel_columns(size: int, channels: int = 1) -> list[str]:
    """`px_<row>_<col>` for grey images; `px_<row>_<col>_<channel>` for RGB."""
    if channels == 1:
        return [f"px_{r}_{c}" for r in range(size) for c in range(size)]
    return [f"px_{r}_{c}_{k}" for r in range(size) for c in range(size) for k in range(channels)]


def to_array(image, size: int, channels: int, ink: str) -> np.ndarray:
    """A Pillow image as (channels, size, size) floats in 0..1, ink high."""
    from PIL import Image

    if channels not in MODES:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    picture = image.convert(MODES[channels]).resize((size, size), Image.Resampling.LANCZOS)
    values = np.asarray(picture, dtype=np.float32) / 255.0
    if ink == "dark":
        values = 1.0 - values
    values = values.reshape(size, size, channels)
    return np.ascontiguousarray(values.transpose(2, 0, 1))


def read_image_folder(
    folder: Path,
    labels_file: str,
    size: int,
    channels: int,
    ink: str,
    max_pixel: float,
) -> pd.DataFrame:
    """Rows (`id`, `label`, pixels) of every image the folder's labels CSV lists.

    The CSV has columns `file` (a path relative to the folder) and `label`; its labels are
    passed on as they are (validation checks them)."""
    from PIL import Image, UnidentifiedImageError

    table = folder / labels_file
    if not table.is_file():
        raise SourceError(
            f"image folder {folder} has no {labels_file} (columns file,label; "
            "labels_file in the task's section names it)"
        )
    listing = pd.read_csv(table, dtype=str, keep_default_na=True)
    missing = [c for c in ("file", "label") if c not in listing.columns]
    if missing:
        raise SourceError(f"{table}: missing column(s) {missing}; expected file,label")
    columns = pixel_columns(size, channels)
    pixels = np.full((len(listing), len(columns)), np.nan, dtype=np.float32)
    unreadable = 0
    for i, name in enumerate(listing["file"].fillna("")):
        path = folder / name
        try:
            with Image.open(path) as image:
                if image.format not in FORMATS:
                    raise UnidentifiedImageError(f"{image.format} is not PNG or JPEG")
                values = to_array(image, size, channels, ink)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            # Empty pixels: validation quarantines the row as unreadable, with its id.
            unreadable += 1
            log.warning("image %s unreadable: %s", path, error)
            continue
        pixels[i] = values.transpose(1, 2, 0).reshape(-1) * max_pixel
    if unreadable:
        log.warning("%d of %d images in %s unreadable", unreadable, len(listing), folder)
    frame = pd.DataFrame(pixels, columns=columns)
    frame.insert(0, "label", listing["label"].to_numpy())
    frame.insert(0, "id", listing["file"].to_numpy())
    return frame


def images(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Rows as model-ready images: float32 (N, channels, size, size) scaled to 0..1."""
    size, channels = spec.options.image_size, spec.options.channels
    values = frame[spec.feature_columns].to_numpy(dtype=np.float32) / spec.options.max_pixel
    # Columns run row by row, then column, then channel (see `images.pixel_columns`).
    return np.ascontiguousarray(
        values.reshape(len(frame), size, size, channels).transpose(0, 3, 1, 2)
    )


class BadImage(ValueError):
    """An upload that cannot be read as an image of the model; the message names the problem and
    `status` is the HTTP status a service answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _declared_size(data: bytes) -> str:
    """The size a PNG or JPEG header declares, read without Pillow's bomb check (which
    `Image.open` applies, and refuses to say the size in)."""

    from PIL import JpegImagePlugin, PngImagePlugin

    for kind in (PngImagePlugin.PngImageFile, JpegImagePlugin.JpegImageFile):
        try:
            width, height = kind(io.BytesIO(data)).size
            return f"{width}×{height}"
        except Exception:  # not this format
            continue
    return "too many"


def image_from_bytes(
    data: bytes, spec: FeatureSpec, max_side: int, ink: str, section: str = "image"
) -> np.ndarray:
    """An uploaded PNG/JPEG as one model-ready image (channels, size, size) in 0..1.

    Grey (1 channel) and RGB (3 channels) are read and converted to what the model reads;
    the image is resized to the model's size. `ink`: "dark" for dark strokes on light
    paper (inverted, since the training images store ink as the high value), "light" for
    light strokes on dark.
    """

    from PIL import Image, UnidentifiedImageError

    too_large = f"the limit is {max_side} per side ({section}.max_upload_side)"
    try:
        # `open` reads only the header: format and declared size are checked before a
        # single pixel is decoded (a small PNG may declare 9000×9000 pixels, 310 MB).
        image = Image.open(io.BytesIO(data))
        if image.format not in FORMATS:
            raise BadImage(f"image format {image.format} is not accepted: send PNG or JPEG", 415)
        width, height = image.size
        if max(width, height) > max_side or min(width, height) < 1:
            raise BadImage(f"image is {width}×{height} pixels; {too_large}", 413)
        image.load()
    except UnidentifiedImageError:
        raise BadImage("not a PNG or JPEG image (no image format recognised)", 415) from None
    except Image.DecompressionBombError:  # declared beyond Pillow's own limit
        raise BadImage(f"image is {_declared_size(data)} pixels; {too_large}", 413) from None
    except OSError as error:  # a known format, but truncated or corrupt
        raise BadImage(f"not a PNG or JPEG image ({error})", 415) from None
    channels = {"L": 1, "RGB": 3, "I;16": 1}.get(image.mode)
    if channels is None:
        bands = len(image.getbands())
        raise BadImage(
            f"image has {bands} channel(s) ({image.mode}); send grey (1 channel) or RGB (3)"
        )
    # Grey and RGB uploads both work: each is converted to the channels the model reads.
    return to_array(image, spec.options.image_size, spec.options.channels, ink)
