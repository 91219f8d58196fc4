"""The one set of rules for accepting a camera image, from a file, a CompressedImage or a raw Image.

Decoders are lenient where this package must not be: OpenCV's ``imread`` fills a truncated JPEG with
grey and returns it as a good image, and nothing stops a small PNG from claiming 15000x15000 pixels
(675 MB decoded). Every image therefore passes here: its size is read from the header and checked
*before* any pixel is decoded, the encoded data must be complete, and a decoder failure is a
``DataError`` that says what is wrong, never a grey image or a foreign exception.

Limits: ``MIN_SIDE`` (32 px) refuses placeholders, thumbnails and 1x1 images while keeping the
smallest real benchmark frames we use (Nordland-tiny, 64x32); both encoders resize to 240x320 or
224x224, so a smaller side would be mostly interpolation. ``DEFAULT_MAX_PIXELS`` (40 M pixels, 120 MB
decoded) admits 8K UHD (33 M) and common 36 M sensors; a camera above it sets the environment
variable ``VPR_MAX_IMAGE_PIXELS`` (read at each check, so the node, ``vpr`` and the readers agree).
Above 179 M pixels Pillow's own decompression-bomb guard refuses the header whatever that says.
"""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from vpr_core.data.frame import DataError

MIN_SIDE = 32
DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "VPR_MAX_IMAGE_PIXELS"


def max_pixels() -> int:
    """The decoded-size cap: ``VPR_MAX_IMAGE_PIXELS`` when set, else ``DEFAULT_MAX_PIXELS``.

    A bad value is a plain ValueError, not a DataError: it is a setting to fix, not an input to skip.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < MIN_SIDE * MIN_SIDE:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r} must be a whole number of pixels >= {MIN_SIDE * MIN_SIDE}")
    return value


def check_size(width: int, height: int, what: str, *, origin: str = "") -> None:
    """Refuse an image below ``MIN_SIDE`` on either side or above ``max_pixels()`` in all.

    ``origin`` says where the size was read (e.g. "from its header"), so the message shows that the
    refusal came before decoding.
    """
    where = f" ({origin})" if origin else ""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise DataError(f"{what} is {width}x{height}{where}, smaller than the least {MIN_SIDE}x{MIN_SIDE} "
                        "pixels a place can be recognised from")
    limit = max_pixels()
    if width * height > limit:
        raise DataError(f"{what} is {width}x{height} = {width * height} pixels{where}, above the limit of {limit}; "
                        f"set {MAX_PIXELS_ENV} to a larger pixel count if the camera really is that large")


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, what: str) -> np.ndarray:
    """Strictly decode an encoded image (JPEG, PNG, BMP, TIFF, WebP, PNM) to uint8 RGB ``[H, W, 3]``.

    OpenCV decodes (grey, 16-bit and alpha images are converted, EXIF orientation applied), the same
    pixels ``cv2.imread`` gives; Pillow only reads the header, because OpenCV has no header-only call.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        raise DataError(f"{what} is empty (0 bytes)")
    raw = buffer.tobytes()
    try:
        with Image.open(io.BytesIO(raw)) as header:
            width, height, kind = header.width, header.height, header.format or "image"
    except Image.DecompressionBombError as err:
        # Pillow refuses headers above 2 x Image.MAX_IMAGE_PIXELS (179 M) itself, without the size.
        raise DataError(f"{what} is too large (from its header, not decoded): {str(err).rstrip('.')}; "
                        f"the limit here is {max_pixels()} pixels") from None
    except UnidentifiedImageError:
        raise DataError(f"{what} could not be decoded: its {buffer.size} bytes do not start with the header of "
                        "a known image format (JPEG, PNG, BMP, TIFF, WebP, PNM)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{what} could not be decoded: its header is damaged ({buffer.size} bytes; {err})") from None
    check_size(width, height, f"{what} ({kind})", origin="from its header, not decoded")
    if kind in ("JPEG", "MPO") and not _jpeg_is_complete(raw):
        raise DataError(f"{what} (JPEG, {buffer.size} bytes) is truncated: its data ends before the end-of-image "
                        "marker; the file was cut short (copy or download it again)")
    if kind == "PNG":
        _verify_png(raw, what)
    rgb = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise DataError(f"{what} ({kind}, {width}x{height}, {buffer.size} bytes) could not be decoded: "
                        "its data is truncated or corrupt")
    return rgb


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether the JPEG's entropy-coded data is followed by its end-of-image marker (FF D9).

    Written by hand because neither library says so without a full decode: OpenCV's file reader
    fills missing rows with grey, and Pillow only notices at ``load()``. The header segments are
    walked by their lengths up to the first start-of-scan, since an EXIF thumbnail inside them
    carries an FF D9 of its own; inside scan data an FF D9 can only be the end marker (byte stuffing).
    """
    pos = 2  # after SOI (FF D8), which Pillow's header check already required
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: the rest is scan data, which must end with EOI
            return data.find(b"\xff\xd9", pos + 2 + length) != -1
        pos += 2 + length
    return False


def _verify_png(data: bytes, what: str) -> None:
    """Check every PNG chunk's CRC up to IEND with Pillow's verifier (no pixels are decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{what} (PNG, {len(data)} bytes) is truncated or corrupt: {err}; "
                        "copy or export it again") from None
