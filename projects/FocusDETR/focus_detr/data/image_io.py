"""Reading image files into 8-bit arrays, whatever the file's PIL mode, or refusing them with one line.

detectron2's ``read_image`` converts with ``PIL.Image.convert``, which clips 16-bit and float pixels to 255: a 16-bit
grayscale PNG becomes pure white and is trained / evaluated on without a word. Here high-bit-depth modes are scaled
to the 8-bit range first (16-bit: 0..65535 -> 0..255; float: 0..1 -> 0..255) and every other mode goes through a
conversion PIL does correctly (palette, CMYK, YCbCr, HSV, with or without alpha: alpha is dropped, as detectron2
does); modes PIL cannot convert correctly (LAB, premultiplied "La") are refused.

:func:`open_image` also returns the file's EXIF orientation and frame count, which callers name to the user (an
annotation made on the stored pixels of a rotated photo, an animated image drawn from its first frame).
:func:`image_files` sorts a mix of files and folders into the images to read and the rest, each with why;
:func:`expand_globs` expands quoted glob patterns first.
"""
import errno
import glob
import os
import stat
from typing import NamedTuple, Optional

import numpy as np
from detectron2.data import detection_utils
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..special_files import special_file_kind

__all__ = ["SIDES_SWAPPED", "ImageRead", "UnreadableImageError", "dark_image_warning", "exact_orientation",
           "expand_globs", "header_size", "image_files", "image_path_problem", "open_image", "read_image", "to_8bit"]

# PIL modes whose conversion to RGB is right as PIL does it
_CONVERTIBLE_MODES = {"1", "L", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV"}
_16_BIT_MAX = 65535


class UnreadableImageError(ValueError):
    """An image file whose content cannot be used (corrupt, truncated, not an image, pixel values out of range): the
    one-line message names the file. The evaluation leaves such an image out, where any other error of its data (a
    size that is not its record's, a resize to 0 pixels, which a config's size may cause for every image) stops
    it."""


def _scaled_16_bit(pixels, file_name, mode):
    low, high = int(pixels.min()), int(pixels.max())
    if low < 0 or high > _16_BIT_MAX:
        raise UnreadableImageError(
            f"cannot read image {file_name}: PIL mode {mode!r} pixel values span {low}..{high}, outside the 16-bit "
            f"range 0..{_16_BIT_MAX}"
        )
    return np.round(pixels.astype(np.float64) * (255.0 / _16_BIT_MAX)).astype(np.uint8)


def _scaled_float(pixels, file_name, mode):
    if not np.isfinite(pixels).all():
        raise UnreadableImageError(f"cannot read image {file_name}: PIL mode {mode!r} has NaN or infinite pixel "
                                   "values")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0.0 or high > 1.0:
        raise UnreadableImageError(
            f"cannot read image {file_name}: PIL mode {mode!r} pixel values span {low:g}..{high:g}; float images "
            "must lie in 0..1"
        )
    return np.round(pixels.astype(np.float64) * 255.0).astype(np.uint8)


def to_8bit(image, file_name="<image>"):
    """A PIL image in mode "L" or "RGB" with the content of ``image``, or ValueError naming ``file_name`` and the
    mode."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode.startswith("I;16") or mode == "I":
        return Image.fromarray(_scaled_16_bit(np.asarray(image), file_name, mode), mode="L")
    if mode == "F":
        return Image.fromarray(_scaled_float(np.asarray(image), file_name, mode), mode="L")
    if mode in _CONVERTIBLE_MODES:
        return image.convert("RGB")
    raise UnreadableImageError(
        f"cannot read image {file_name}: PIL mode {mode!r} is not supported (convert it to RGB, L, or 16-bit grayscale)"
    )


class ImageRead(NamedTuple):
    """What :func:`open_image` read: the pixels and what the file says beyond them."""

    pixels: np.ndarray  # (H, W, C) uint8, upright (EXIF orientation applied), writable
    orientation: int  # the EXIF orientation tag, 1 (as stored) when the file has none
    frames: int  # frames in the file (an animated GIF/PNG/WebP has several; the pixels are the first one's)
    # of a 16-bit (or 32-bit integer) image, the bits its brightest pixel needs (12 for a 12-bit sensor's data stored in
    # 16 bits, read nearly black); None for other images
    bits_used: Optional[int] = None


# A 16-bit image whose brightest pixel needs this many bits or fewer becomes 0..16 of 255 when read: nearly black.
_DARK_BITS = 12


def dark_image_warning(file_name, bits_used):
    """A warning for a 16-bit image whose pixels use at most 12 of its bits (a 12-bit camera's raw data, stored in 16
    bits): scaled from 0..65535 to 0..255 as every 16-bit image is, it is nearly black; None otherwise."""
    if not bits_used or bits_used > _DARK_BITS:  # (0: an all-black image, black in any bit depth)
        return None
    return (f"image {file_name} is a 16-bit image whose brightest pixel is below {2 ** bits_used} ({bits_used} bits "
            f"used): read as 16-bit it becomes 0..{round(255 * (2 ** bits_used - 1) / _16_BIT_MAX)} of 255, nearly "
            "black; scale its pixels to 16 bits (or save it as 8-bit) first")


def open_image(file_name, img_format="RGB"):
    """Reads ``file_name`` as an 8-bit array in ``img_format``, with its EXIF orientation applied (as detectron2 does).

    Args:
        file_name (str): image path.
        img_format (str): "RGB", "BGR", "L" or another format ``detection_utils.convert_PIL_to_numpy`` accepts.

    Returns:
        ImageRead: the pixels ``(H, W, C)`` uint8 (C = 3, or 1 for "L"), the orientation tag, the frame count and,
        for a 16-bit image, the bits its pixels use.

    Raises:
        FileNotFoundError / ValueError, with one line naming the file and the problem.
    """
    problem = image_path_problem(file_name)
    if problem is not None:  # a pipe would block forever, a folder fail
        what, missing = problem
        if missing:
            raise FileNotFoundError(f"image file not found: {file_name}" + (f" ({what})" if what else ""))
        raise UnreadableImageError(f"cannot read image {file_name}: {what}")
    try:
        with Image.open(file_name) as image:
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            frames = getattr(image, "n_frames", 1)
            image = ImageOps.exif_transpose(image)
            image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {file_name}") from None
    # what PIL raises for corrupt, truncated, oversized or unreadable files
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"cannot read image {file_name}: {type(error).__name__}: {error}") from None
    # writable: detectron2 returns PIL's read-only buffer, and the flips' torch.from_numpy warned about it in every
    # training run ("The given NumPy array is not writable ... undefined behavior")
    bits_used = None
    if image.mode.startswith("I;16") or image.mode == "I":
        bits_used = max(int(np.asarray(image).max()), 0).bit_length()
    pixels = np.require(detection_utils.convert_PIL_to_numpy(to_8bit(image, file_name), img_format),
                        requirements="W")
    return ImageRead(pixels, orientation if orientation in range(1, 9) else 1, frames, bits_used)


def read_image(file_name, img_format="RGB"):
    """The pixels of :func:`open_image` alone: ``(H, W, C)`` uint8, upright, writable."""
    return open_image(file_name, img_format).pixels


_A_FOLDER = "a folder, not an image file"


def image_path_problem(path):
    """What keeps ``path`` from being opened as an image file, judged from a ``stat`` (nothing is read), or None for
    a regular file (a link to one included), as ``(what, missing)``, for a line naming the path. ``missing``: nothing
    is there, or a link to nothing (:func:`open_image` raises FileNotFoundError), and ``what`` is "" or that link ("a
    symbolic link to <target>, which is not there"). Otherwise (:class:`UnreadableImageError` there) ``what``
    completes "<path> is ...": "a folder, not an image file", "a symbolic link loop, not an image file", "a named
    pipe (FIFO), not an image file" (or another special file), "inaccessible: <why>" (no permission on a folder
    above it, a file in place of one)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return (f"a symbolic link to {os.readlink(path)}, which is not there" if os.path.islink(path) else ""), True
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop, not an image file", False
        return f"inaccessible: {error.strerror or error}", False
    if stat.S_ISDIR(mode):
        return _A_FOLDER, False
    if not stat.S_ISREG(mode):
        return f"{special_file_kind(mode) or 'not a regular file'}, not an image file", False
    return None


# the EXIF orientations that turn an image by a quarter: read upright, its width and height are swapped
SIDES_SWAPPED = (5, 6, 7, 8)
# what PIL raises for a file it cannot open as an image (its format plugins, for a damaged header)
_NOT_OPENED = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


def _orientation_of(exif):
    """The EXIF orientation tag of ``exif`` that :func:`open_image` applies (1 when none, or one out of range)."""
    orientation = exif.get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in range(1, 9) else 1


def header_size(file_name):
    """``(height, width, orientation)`` of the image file ``file_name`` as :func:`open_image` reads it (upright: its
    EXIF orientation applied), from its header alone, no pixel decoded; None when PIL cannot open it (:func:`open_image`
    names why when it reads it). A 416x416 PNG tile takes about 0.04 ms (warm file cache), a JPEG with EXIF 0.05 ms.

    PIL's ``getexif`` of a PNG decodes the whole image (9 ms a tile) to look for an EXIF chunk after the pixels; here
    only the chunks before them are read, so such a rare PNG reads as untagged: :func:`exact_orientation` tells."""
    try:
        with Image.open(file_name) as image:
            orientation = _orientation_of(Image.Image.getexif(image))  # the base class's: no decode
            width, height = image.size
    except _NOT_OPENED:
        return None
    return (width, height, orientation) if orientation in SIDES_SWAPPED else (height, width, orientation)


def exact_orientation(file_name):
    """The EXIF orientation :func:`open_image` applies to ``file_name`` (1 when none), where :func:`header_size` may
    have missed it (a PNG's EXIF chunk after its pixels, found by decoding them); None when PIL cannot read it."""
    try:
        with Image.open(file_name) as image:
            return _orientation_of(image.getexif())
    except _NOT_OPENED:
        return None


def _why_not_an_image(path):
    """Why ``path`` cannot be an image, judged from its header (cheap), or None when it may be one."""
    problem = image_path_problem(path)
    if problem is not None:
        what, missing = problem
        if missing:
            return f"not found ({what})" if what else "not found"
        if what == _A_FOLDER:  # only reached for a folder inside an input folder: input folders are expanded
            return "a folder inside an input folder (only the files of an input folder are read)"
        return what
    try:
        if os.path.getsize(path) == 0:
            return "an empty file (0 bytes)"
        with Image.open(path):
            return None
    except UnidentifiedImageError:
        return "not an image (Pillow does not recognise its format)"
    # what PIL's format plugins raise for a damaged header
    except (Image.DecompressionBombError, SyntaxError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    except OSError as error:
        return f"cannot open it: {error.strerror or error}"


def image_files(inputs):
    """The files among ``inputs`` that are images by their header, and the others with why.

    A folder in ``inputs`` stands for the entries in it, sorted by name (not its subfolders' files). Only file
    headers are read: an image whose pixels are damaged (truncated) is found by :func:`read_image`.

    Args:
        inputs (list[str]): file and folder paths.

    Returns:
        (list[str], list[tuple[str, str]]): image paths in order; (path, why) of every other entry.
    """
    images, skipped = [], []
    for path in inputs:
        entries = [path]
        if os.path.isdir(path):
            try:
                entries = [os.path.join(path, name) for name in sorted(os.listdir(path))]
            except OSError as error:
                skipped.append((path, f"cannot list the folder: {error.strerror or error}"))
                continue
            if not entries:
                skipped.append((path, "an empty folder"))
        for entry in entries:
            why = _why_not_an_image(entry)
            if why is None:
                images.append(entry)
            else:
                skipped.append((entry, why))
    return images, skipped


def expand_globs(inputs):
    """``inputs`` with each glob pattern (``*``, ``?``, ``[...]``; ``**`` across folders) replaced by the paths it
    matches, sorted, each file once (the shortest of its paths); a path that exists as written is kept as it is,
    even with such characters in its name.

    Raises:
        ValueError naming the first pattern that matches nothing (one line).
    """
    expanded = []
    for path in inputs:
        if not glob.has_magic(path) or os.path.lexists(path):
            expanded.append(path)
            continue
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise ValueError(f"no file matches {path!r}")
        # ``**`` follows linked folders, so a link to a folder above repeats its files under ever longer paths
        shortest = {}
        for match in matches:
            real = os.path.realpath(match)
            if real not in shortest or len(match) < len(shortest[real]):
                shortest[real] = match
        expanded += sorted(shortest.values())
    return expanded
