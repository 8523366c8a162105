"""Reading images and their metadata from FITS files (shared by the CLI and the demo loader)."""

import contextlib
import warnings

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning

__all__ = []  # private module

#: Raised by astropy for non-standard header cards such as ESO's ``ESO-LOG ...``.
_INVALID_CARD_MESSAGE = "The following header keyword is invalid"
#: Keywords an extension inherits from the primary header when it lacks them.
_INHERITED_KEYWORDS = ("GAIN", "SATURATE")


class FITSReadError(ValueError):
    """A FITS file or HDU that cannot be used as an image (message meant for users)."""


@contextlib.contextmanager
def quiet_header_warnings():
    """Silence astropy's notes about non-standard header cards and auto-fixed WCS keywords."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_INVALID_CARD_MESSAGE,
                                category=AstropyUserWarning)
        warnings.filterwarnings("ignore", category=fits.verify.VerifyWarning)
        warnings.filterwarnings("ignore", category=FITSFixedWarning)
        yield


def _describe(hdul):
    parts = []
    for i, hdu in enumerate(hdul):
        shape = getattr(hdu, "shape", None) if hdu.is_image else None
        what = "x".join(str(n) for n in shape[::-1]) + " image" if shape else type(hdu).__name__
        parts.append(f"{i}: {hdu.name or '-'} ({what})")
    return "; ".join(parts)


def _open(path):
    try:
        return fits.open(path, memmap=False)
    except FileNotFoundError as exc:
        msg = f"image file not found: {path}"
        raise FITSReadError(msg) from exc
    except OSError as exc:
        msg = f"cannot read {path} as FITS: {exc}"
        raise FITSReadError(msg) from exc


def image_hdus(path):
    """
    The image HDUs of a FITS file, from the headers alone (no data is read).

    Returns
    -------
    entries : list of (int, int)
        ``(index, NAXIS)`` of each image HDU with data (NAXIS >= 1), in file order.
    description : str
        Every HDU, for error messages.
    count : int
        The number of HDUs.

    Raises
    ------
    FITSReadError
        Missing or unreadable file.
    """
    with quiet_header_warnings(), _open(path) as hdul:
        try:
            entries = [(i, int(h.header.get("NAXIS", 0))) for i, h in enumerate(hdul)
                       if h.is_image and h.header.get("NAXIS", 0)]
        except OSError as exc:   # a header cut short
            msg = f"cannot read {path} as FITS: {exc}"
            raise FITSReadError(msg) from exc
        return entries, _describe(hdul), len(hdul)


class FrameSection:
    """
    A FITS file's 2-D image HDU read a block at a time: ``frame[rows, cols]`` is a
    native-endian float32 array read from the file (the HDU's ``section``; BSCALE and
    BZERO applied), never the whole image unless asked. The file is opened for each read
    (a header parse, small beside a tile's measurement), so nothing stays open.
    """

    ndim = 2

    def __init__(self, path, index, shape):
        self.path, self.index, self.shape = path, int(index), tuple(int(n) for n in shape)

    def __getitem__(self, region):
        try:
            with quiet_header_warnings(), _open(self.path) as hdul:
                block = np.array(hdul[self.index].section[region])
        except (ValueError, TypeError, OSError) as exc:
            msg = (f"HDU {self.index} of {self.path} cannot be read: the file is truncated "
                   f"or corrupt ({type(exc).__name__}: {exc})")
            raise FITSReadError(msg) from exc
        return _native_float32(block)


def read_image(path, hdu=None, lazy=False):
    """
    A 2-D image and its header from a FITS file.

    Parameters
    ----------
    path : path-like
    hdu : int, optional
        HDU index. Default: the first HDU holding a 2-D image.
    lazy : bool
        Return a `FrameSection` (read a block at a time) instead of the data.

    Returns
    -------
    data : 2-D native-endian float32 array, or `FrameSection`
    header : `~astropy.io.fits.Header`
        The image HDU's header; for an extension, the primary header's
        GAIN and SATURATE are added when the extension lacks them.
    index : int
        The HDU used.

    Raises
    ------
    FITSReadError
        Missing or unreadable file, bad HDU index, or no 2-D image.
    """
    with quiet_header_warnings():
        hdul = _open(path)
        with hdul:
            if hdu is None:
                index = next((i for i, h in enumerate(hdul)
                              if h.is_image and h.header.get("NAXIS", 0) == 2), None)
                if index is None:
                    msg = f"{path} has no 2-D image HDU (HDUs: {_describe(hdul)})"
                    raise FITSReadError(msg)
            else:
                index = int(hdu)
                if not -len(hdul) <= index < len(hdul):
                    msg = (f"HDU {hdu} does not exist in {path}, which has {len(hdul)} HDU(s) "
                           f"({_describe(hdul)})")
                    raise FITSReadError(msg)
                index %= len(hdul)
            selected = hdul[index]
            if lazy and selected.is_image and selected.header.get("NAXIS", 0) == 2:
                header = _with_inherited(selected.header.copy(), hdul, index)
                return FrameSection(path, index, selected.shape), header, index
            try:
                data = selected.data if selected.is_image else None
            except (ValueError, TypeError, OSError) as exc:
                # astropy reports a short data block as e.g. "cannot reshape array".
                msg = (f"HDU {index} of {path} cannot be read: the file is truncated or "
                       f"corrupt ({type(exc).__name__}: {exc})")
                raise FITSReadError(msg) from exc
            if data is None or data.ndim != 2:
                shape = "no data" if data is None else f"a {data.ndim}-D array"
                msg = (f"HDU {index} of {path} holds {shape}, not a 2-D image; choose another "
                       f"with --hdu (HDUs: {_describe(hdul)})")
                raise FITSReadError(msg)
            header = _with_inherited(selected.header.copy(), hdul, index)
            data = _native_float32(data)
    return data, header, index


def _with_inherited(header, hdul, index):
    """An extension's header with the primary header's GAIN and SATURATE where it lacks them."""
    if index != 0:
        for key in _INHERITED_KEYWORDS:
            if key not in header and key in hdul[0].header:
                header[key] = (hdul[0].header[key], "from the primary header")
    return header


def _native_float32(data):
    """
    ``data`` as a native-endian float32 array; FITS's big-endian float32 is swapped in
    place (the array read is ours), not copied: one image in memory, not two.
    """
    if (data.dtype.kind == "f" and data.dtype.itemsize == 4 and not data.dtype.isnative
            and data.flags.writeable):
        data.byteswap(inplace=True)
        return data.view(data.dtype.newbyteorder("="))
    return np.asarray(data, dtype=np.float32).astype("=f4", copy=False)


def header_unit(header):
    """The unit in BUNIT, or None when absent, blank or not understood."""
    bunit = str(header.get("BUNIT", "") or "").strip()
    if not bunit:
        return None
    for fmt in ("fits", None):
        try:
            unit = u.Unit(bunit, format=fmt)
        except ValueError:
            continue
        return None if unit == u.dimensionless_unscaled else unit
    return None


def header_wcs(header):
    """The celestial WCS of a header, or None when it has none."""
    with quiet_header_warnings():
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # noqa: BLE001 - a broken WCS is just "no WCS" for photometry
            return None
    return wcs if wcs.has_celestial else None


def header_float(header, keyword):
    """A positive float keyword, or None."""
    with quiet_header_warnings():
        value = header.get(keyword)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None
