"""Decode one image file into a fixed-size uint8 RGB array, safely.

Pillow, no TensorFlow, so the input side works under every Keras
backend; with the ``featcache[jpeg]`` extra, plain RGB JPEGs are decoded by
simplejpeg (libjpeg-turbo without Pillow's per-image overhead: the same pixels,
13% less CPU, docs/PERFORMANCE.md), Pillow everywhere else. Transparent images are composited on a background colour first
(:func:`composite`), as image viewers show them. Every failure becomes a :class:`DecodeError` whose message is the
reason recorded in the cache; the engine skips the item and carries on.
"""

from __future__ import annotations

import functools
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from .errors import DecodeError, FeatcacheError

#: Images with more pixels than this are refused as decompression bombs.
#: 89.5 MP is Pillow's own warning threshold; a 16k x 5k panorama passes.
DEFAULT_MAX_PIXELS = 89_478_485

#: File name endings that sources treat as images (lower case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

#: what transparent pixels are composited on: browsers and image viewers show transparency on white
DEFAULT_BACKGROUND = "white"

# Truncated files must fail, not decode to half-grey pictures: featcache relies on Pillow's default,
# ImageFile.LOAD_TRUNCATED_IMAGES = False, and never changes that process-wide setting itself.


def parse_background(value) -> tuple[int, int, int]:
    """An opaque colour as ``(r, g, b)``: a name Pillow's ImageColor knows (``white``) or ``#rrggbb``."""
    try:
        rgb = ImageColor.getrgb(value) if isinstance(value, str) else None
    except ValueError:
        rgb = None
    if rgb is None or len(rgb) == 4 and rgb[3] != 255:
        raise FeatcacheError(f"background must be an opaque colour, a name such as white or #rrggbb, got {value!r}")
    return tuple(int(v) for v in rgb[:3])


def background_hex(value) -> str:
    """The colour ``value`` as ``#rrggbb``: the cache key's spelling, so ``white`` and ``#FFFFFF`` agree."""
    return "#{:02x}{:02x}{:02x}".format(*parse_background(value))


def _has_transparency(im: Image.Image) -> bool:
    if im.mode.startswith(("I", "F")):  # 16/32-bit grey: a colour key there is rare, and RGBA would clip at 255
        return False
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def composite(im: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, bool]:
    """``im`` over an opaque ``background`` colour, as RGB, and whether any pixel was not opaque.

    RGBA, LA, palette images with a transparent entry and grey or RGB images
    with a ``transparency`` colour key all go through RGBA; everything else is
    returned untouched.
    """
    if not _has_transparency(im):
        return im, False
    rgba = im.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] == 255:  # an alpha channel, every pixel opaque
        return rgba.convert("RGB"), False
    base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB"), True


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: scale by the bit depth, never clip at 255.
        arr = np.asarray(im, dtype=np.uint32 if im.mode == "I" else np.uint16)
        shift = 8 if im.mode != "I" else 24
        if im.mode == "I":
            arr = np.clip(arr, 0, None).astype(np.uint32)
        arr8 = (arr >> shift).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return im.convert("RGB")  # palette, grey, 1-bit, CMYK (Pillow's naive conversion, no ICC profile), YCbCr


@functools.cache
def _simplejpeg():
    """The ``simplejpeg`` module (the ``featcache[jpeg]`` extra), or None: Pillow decodes JPEGs then."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def fast_jpeg_available() -> bool:
    """Whether plain RGB JPEGs are decoded by simplejpeg (the ``featcache[jpeg]`` extra is installed)."""
    return _simplejpeg() is not None


def _turbo_decode(im: Image.Image, data: bytes | None) -> Image.Image | None:
    """``im`` (opened, not loaded) decoded by simplejpeg, or None where Pillow must decode it.

    Only an RGB (YCbCr) JPEG without an EXIF turn: there libjpeg-turbo's default decode (accurate integer
    IDCT, fancy upsampling) gives Pillow's pixels exactly (tests/test_decode_fast.py).
    """
    simplejpeg = _simplejpeg()
    if simplejpeg is None or data is None or im.format != "JPEG" or im.mode != "RGB":
        return None
    if im.getexif().get(0x0112, 1) != 1:  # Pillow's exif_transpose turns it (EXIF or XMP orientation)
        return None
    try:
        arr = simplejpeg.decode_jpeg(data, "RGB", strict=True)
    except ValueError:  # a damaged file: Pillow decodes it again and words the reason as it always did
        return None
    return Image.fromarray(arr) if arr.shape[:2] == (im.size[1], im.size[0]) else None


def _load(im: Image.Image, size: tuple[int, int], data: bytes | None) -> Image.Image:
    """``im`` decoded (drafted when twice ``size`` (width, height), turned by its EXIF), by simplejpeg when it can
    (``data`` given), else by Pillow."""
    width, height = size
    draft = im.format == "JPEG" and im.size[0] >= 2 * width and im.size[1] >= 2 * height
    turbo = None if draft else _turbo_decode(im, data)
    if turbo is not None:
        return turbo
    if draft:  # decode at a reduced DCT scale that still covers the target
        im.draft("RGB", (width, height))
    im.load()
    ImageOps.exif_transpose(im, in_place=True)  # no copy when nothing turns
    return im


def decode_image(path: str | os.PathLike, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 background: tuple[int, int, int] = (255, 255, 255), report: list | None = None,
                 data: bytes | None = None, fast_jpeg: bool = True) -> np.ndarray:
    """Decode ``path`` into a ``(height, width, 3)`` uint8 array of ``size``.

    JPEGs are decoded in draft mode (DCT scaling) when they are at least twice
    the target size, EXIF orientation is applied, animated files give their
    first frame, transparent images are composited on ``background`` (then
    ``True`` is appended to ``report``, when given), and any mode (palette,
    CMYK, 16-bit, grey) becomes RGB (docs/FORMAT.md, "How images are decoded"). ``data``: the file's bytes,
    already read (the caller hashed them), decoded instead of reading ``path``; with them, ``fast_jpeg``
    lets simplejpeg decode a plain RGB JPEG (:func:`fast_jpeg_available`), to the same pixels.
    """
    height, width = size
    if data is None:
        try:
            empty = os.stat(path).st_size == 0
        except OSError as exc:
            raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None
    else:
        empty, path = not data, io.BytesIO(data)
    if empty:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DecodeError(
                        f"decompression bomb: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,}"
                    )
                im = _load(im, (width, height), data if fast_jpeg else None)
                im, had_alpha = composite(im, background)
                im = _to_rgb(im)
                if im.size != (width, height):
                    im = im.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
                arr = np.asarray(im, dtype=np.uint8)
    except (DecodeError, MemoryError):
        raise  # running out of memory is the machine's problem, not the file's: never record it as a skip
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image Pillow can identify") from None
    except OSError as exc:
        msg = str(exc) or exc.__class__.__name__
        raise DecodeError(f"corrupt or truncated image: {msg}") from None
    except Exception as exc:  # a hostile file must never stop a run
        raise DecodeError(f"cannot decode: {exc.__class__.__name__}: {exc}") from None
    if arr.shape != (height, width, 3):  # defensive: never ship a wrong shape
        raise DecodeError(f"decoded to unexpected shape {arr.shape}")
    if had_alpha and report is not None:
        report.append(True)
    return arr


def composite_array(images: np.ndarray, background: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """``N x H x W x 4`` uint8 images over ``background`` as ``N x H x W x 3``, and how many had a pixel not opaque.

    The same arithmetic as :func:`composite` (Pillow's ``alpha_composite`` over an opaque colour).
    """
    alpha = images[..., 3:].astype(np.uint16)
    bg = np.asarray(background, np.uint16)
    mixed = (images[..., :3].astype(np.uint16) * alpha + bg * (255 - alpha) + 127) // 255
    return mixed.astype(np.uint8), int(np.count_nonzero((images[..., 3] < 255).reshape(len(images), -1).any(axis=1)))
