"""Decode one image file (PNG, JPEG, BMP, TIFF, GIF, WebP or DICOM) into a fixed-size array.

* The format is detected from the file's first bytes, never from its name (the TB set holds PNG
  files named ``.jpg``); a file that matches no known signature is refused as "not an image".
* DICOM (``pydicom``): the modality LUT (rescale slope/intercept) and the VOI LUT or window are
  applied (``pydicom.pixels.apply_modality_lut`` / ``apply_voi_lut``), MONOCHROME1 is inverted
  so that bone is bright, and the result is scaled to 0..255 by its own minimum and maximum.
  The PatientID, PatientSex, PatientAge and ViewPosition tags are returned as well.
* Greyscale images deeper than 8 bits (16-bit PNG, TIFF) are scaled to 0..255 by their own
  minimum and maximum; alpha channels are dropped; palette and CMYK images become RGB.
* Resizing uses Pillow's antialiased bilinear filter (``Image.Resampling.BILINEAR``) to a
  ``size x size`` square (the aspect ratio is not kept), in the file's own mode (L or RGB).

Channels are chosen by :func:`to_channels` once the whole dataset is decoded (see
:data:`CHANNELS`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medunlearn.errors import DataError

RESAMPLE = Image.Resampling.BILINEAR
#: ``auto``: one channel unless most images carry colour (grey X-rays stored as RGB, or mixed
#: L/RGB files, become one channel); ``1`` always grey; ``3`` always RGB; ``source`` (unsafe):
#: the colour exactly as stored, one channel only if every file is single-band. ``source`` and
#: ``3`` keep whatever differs between files (the TB set's tinted RGB scans are all
#: tuberculosis), which a model can learn instead of the disease.
CHANNELS = ("auto", "1", "3", "source")
#: mean |R-G| + |G-B| (levels, after resizing) above which an RGB image counts as colour
COLOUR_THRESHOLD = 2.0

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)


def sniff_format(head: bytes) -> str | None:
    """The format of a file from its first 132 bytes (``DICOM``, ``PNG``, ...), else None."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    for sig, fmt in _SIGNATURES:
        if head.startswith(sig):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass
class Decoded:
    """One decoded, resized image: ``pixels`` (H, W) or (H, W, 3) uint8."""

    pixels: np.ndarray
    single_band: bool  # the file stores one band (L, I;16, MONOCHROME)
    colour: bool  # RGB with visible colour (not a grey image stored as RGB)
    tags: dict[str, str] = field(default_factory=dict)  # DICOM patient id, sex, age, view


def _scale(arr: np.ndarray) -> np.ndarray:
    """Min-max scale to uint8 (a constant image becomes 0)."""
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _fail(path: Path, problem: str, fix: str) -> DataError:
    return DataError(f"Image {path}: {problem}. {fix}")


def _decode_dicom(data: bytes, path: Path) -> tuple[Image.Image, dict[str, str]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about each odd value it tolerates
            ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise _fail(path, f"is a corrupt DICOM file ({type(exc).__name__}: {exc})",
                    "Export it again from the PACS or remove its row from the manifest.") from None
    if "PixelData" not in ds and "SOPClassUID" not in ds:
        # pydicom stops quietly at the first unreadable element: nothing usable was read
        raise _fail(path, "is a corrupt or truncated DICOM file (its header is followed by no "
                    "readable data elements)",
                    "Export it again from the PACS or remove its row from the manifest.")
    if "PixelData" not in ds:
        raise _fail(path, "is a DICOM file without pixel data (a structured report, "
                    "presentation state or other non-image object)",
                    "List only DICOM images (with a PixelData element) in the manifest.")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad pixel data
        raise _fail(path, f"has DICOM pixel data that cannot be decoded ({exc})",
                    "If it is compressed (JPEG 2000, JPEG-LS), install a decoder plugin such as "
                    "'pip install pylibjpeg pylibjpeg-openjpeg'; if it is truncated, export it "
                    "again.") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise _fail(path, f"is a multi-frame DICOM ({frames} frames)",
                    "Export the frame to use as a single-frame file.")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        img = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8), "RGB")
    elif arr.ndim == 2:
        x = apply_modality_lut(arr, ds)
        x = apply_voi_lut(x, ds) if ("WindowCenter" in ds or "VOILUTSequence" in ds) else x
        x = _scale(x)
        if photometric == "MONOCHROME1":
            x = 255 - x
        img = Image.fromarray(x, "L")
    else:
        raise _fail(path, f"has DICOM pixel data of shape {arr.shape}",
                    "Only single-frame greyscale or RGB DICOM images are supported.")
    tags = {}
    for key, tag in (("patient_id", "PatientID"), ("sex", "PatientSex"),
                     ("age", "PatientAge"), ("view", "ViewPosition")):
        value = str(getattr(ds, tag, "") or "").strip()
        if value:
            tags[key] = value
    return img, tags


def _to_l_or_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode in ("1", "LA", "La"):
        return img.convert("L")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_scale(np.asarray(img)), "L")
    return img.convert("RGB")  # RGBA, P, CMYK, YCbCr, LAB, HSV


def decode(path: Path, data: bytes, size: int | None) -> Decoded:
    """Decode the bytes ``data`` of ``path`` and resize them to ``size`` (None: keep).

    Raises:
        DataError: not an image, unreadable or truncated, a corrupt DICOM or one without pixels.
    """
    fmt = sniff_format(data[:132])
    if fmt is None:
        raise _fail(path, "is not an image (its first bytes match no PNG, JPEG, BMP, TIFF, GIF, "
                    "WebP or DICOM signature)",
                    "Check the path column: it must name image files, relative to the CSV")
    tags: dict[str, str] = {}
    if fmt == "DICOM":
        img, tags = _decode_dicom(data, path)
        single = img.mode == "L"
    else:
        try:
            img = Image.open(io.BytesIO(data), formats=[fmt])
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _fail(path, f"declares more than {Image.MAX_IMAGE_PIXELS:,} pixels, more than "
                        "any medical image needs (a damaged file or a decompression bomb); it "
                        "was not decoded",
                        "Export the image again at its real size or remove its row") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise _fail(path, f"is an unreadable or truncated {fmt} file ({exc})",
                        "Export the image again or remove its row.") from None
        single = img.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N",
                              "F")
        img = _to_l_or_rgb(img)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    pixels = np.asarray(img, dtype=np.uint8)
    colour = False
    if pixels.ndim == 3:
        p = pixels.astype(np.int16)
        chroma = (np.abs(p[..., 0] - p[..., 1]).mean() + np.abs(p[..., 1] - p[..., 2]).mean())
        colour = bool(chroma > COLOUR_THRESHOLD)
    return Decoded(np.ascontiguousarray(pixels), single, colour, tags)


def resolve_channels(channels: str, decoded: list[Decoded]) -> int:
    """The channel count for ``channels`` (see :data:`CHANNELS`) over a decoded dataset."""
    channels = str(channels)
    if channels not in CHANNELS:
        raise DataError(f"Unknown channels setting {channels!r}; choose one of "
                        f"{', '.join(CHANNELS)} (auto makes grey X-rays one channel and keeps "
                        "colour photographs RGB).")
    if channels in ("1", "3"):
        return int(channels)
    if channels == "source":
        return 1 if all(d.single_band for d in decoded) else 3
    n_colour = sum(d.colour for d in decoded)
    return 3 if n_colour * 2 > len(decoded) else 1


def to_channels(d: Decoded, c: int) -> np.ndarray:
    """(C, H, W) uint8 of one decoded image with ``c`` channels.

    To one channel, RGB uses Pillow's ITU-R 601-2 luma; to three, grey is repeated.
    """
    px = d.pixels
    if c == 1:
        if px.ndim == 3:
            px = np.asarray(Image.fromarray(px, "RGB").convert("L"))
        return px[None]
    if px.ndim == 2:
        return np.repeat(px[None], 3, axis=0)
    return np.ascontiguousarray(px.transpose(2, 0, 1))


__all__ = ["CHANNELS", "RESAMPLE", "Decoded", "decode", "resolve_channels", "sniff_format",
           "to_channels"]
