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

import logging
from pathlib import Path

import numpy as np
import pandas as pd

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

    from loopline.errors import SourceError

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
