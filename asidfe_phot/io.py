"""
Reading images and their metadata from FITS files, as the ``asidfe-phot`` command does.

`read_image` finds the first 2-D image HDU (or the one asked for), returns
native-endian float32 data and its header (an extension inherits the primary
header's ``GAIN`` and ``SATURATE``), and names the problem of a missing,
truncated or imageless file (`FITSReadError`). The ``header_*`` helpers read
the unit (``BUNIT``), the celestial WCS and positive float keywords.
"""

from asidfe_phot._fitsio import (
    FITSReadError,
    header_float,
    header_unit,
    header_wcs,
    read_image,
)

__all__ = ["FITSReadError", "read_image", "header_float", "header_unit", "header_wcs"]
