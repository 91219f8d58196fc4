"""Image files on disk: listing in capture order, decoding to RGB, and a lazy frame source over them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from vpr_core.data.frame import DataError, Frame
from vpr_core.data.image_check import decode_image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders ``img2`` before ``img10``: camera drivers rarely zero-pad frame numbers."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(text))


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` in natural order; a missing or image-less folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"image folder {folder} {what}")
    pattern = "**/*" if recursive else "*"
    # Hidden files (macOS "._name.jpg" companions, editor backups) are never frames.
    files = [
        p
        for p in folder.glob(pattern)
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise DataError(
            f"image folder {folder} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}"
            f"{' in its subfolders too' if recursive else ''})"
        )
    return sorted(files, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]`` (grey and 16-bit files are converted) under the
    rules of ``image_check``: ``cv2.imread`` itself would return a truncated JPEG as a grey image."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except OSError as err:
        raise DataError(f"image file {path} could not be read: {err.strerror or err}") from None
    return decode_image(data, f"image file {path}")


class ImageFiles:
    """Frame source over a fixed list of image files, with random access.

    Random access lets an evaluation report fetch the few database frames it shows without
    iterating the whole set; per-file positions (UTM, lat/lon) and stamps are optional.
    """

    def __init__(
        self,
        root: Path,
        files: Sequence[Path],
        *,
        camera: str = "",
        stamps_ns: Sequence[int] | None = None,
        utm: np.ndarray | None = None,
        latlon: np.ndarray | None = None,
    ) -> None:
        self.root = Path(root)
        self.files = list(files)
        self.name = str(self.root)
        self.camera = camera
        for label, values in (("stamps_ns", stamps_ns), ("utm", utm), ("latlon", latlon)):
            if values is not None and len(values) != len(self.files):
                raise ValueError(f"{label} has {len(values)} entries for {len(self.files)} files")
        self.stamps_ns = None if stamps_ns is None else [int(s) for s in stamps_ns]
        self.utm = utm
        self.latlon = latlon

    @property
    def names(self) -> list[str]:
        """File names relative to the root, the ``name`` of each frame."""
        return [p.relative_to(self.root).as_posix() for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Frame:
        if not 0 <= index < len(self.files):
            raise IndexError(f"frame {index} out of range for {len(self.files)} frames in {self.root}")
        path = self.files[index]
        return Frame(
            index=index,
            rgb=read_rgb(path),
            name=path.relative_to(self.root).as_posix(),
            source=self.name,
            camera=self.camera,
            stamp_ns=None if self.stamps_ns is None else self.stamps_ns[index],
            utm=_pair(self.utm, index),
            latlon=_pair(self.latlon, index),
        )

    def __iter__(self) -> Iterator[Frame]:
        for index in range(len(self.files)):
            yield self[index]


def _pair(values: np.ndarray | None, index: int) -> tuple[float, float] | None:
    """Row ``index`` as a tuple, or None where the source left the value out (NaN)."""
    if values is None or not np.all(np.isfinite(values[index])):
        return None
    return float(values[index][0]), float(values[index][1])
