"""
Bit flags of the ``flags`` column returned by `~asidfe_phot.MLPhotometry`.

Test a bit with ``(tbl['flags'] & asidfe_phot.flags.EDGE) != 0``; list the
names set on a row with `decode_flags`. Bits are never renumbered.
"""

import numpy as np

from asidfe_phot import _thresholds as _t
from asidfe_phot._stamps import STAMP_SIZE as _STAMP

__all__ = ["FLAG_DEFINITIONS", "EDGE", "MASKED", "CORE_MASKED", "NO_OVERLAP", "LARGE_SHIFT",
           "OUTSIDE_TRAINING", "NONPOSITIVE_FLUX", "SATURATED", "NO_SOURCE_NOISE",
           "COMPACT", "PSF_MISMATCH", "BLENDED", "NO_POSITION", "decode_flags", "flag_table"]

EDGE = 1
MASKED = 2
CORE_MASKED = 4
NO_OVERLAP = 8
LARGE_SHIFT = 16
OUTSIDE_TRAINING = 32
NONPOSITIVE_FLUX = 64
SATURATED = 128
NO_SOURCE_NOISE = 256
COMPACT = 512
PSF_MISMATCH = 1024
BLENDED = 2048
NO_POSITION = 4096

# Fractions that read better as words.
_FRACTIONS = {0.5: "half"}

#: The registry: (bit, name, description); docs and decode_flags derive from it. The
#: numbers in the descriptions are the thresholds the code uses (`asidfe_phot._thresholds`).
FLAG_DEFINITIONS = (
    (EDGE, "EDGE", f"the {_STAMP}x{_STAMP} stamp extends beyond the image; missing pixels set "
     "to background"),
    (MASKED, "MASKED",
     "the stamp holds masked, non-finite or dead pixels (more than "
     f"{_t.LOW_BAD_SIGMA:g} sigma below the background); they are set to background"),
    (CORE_MASKED, "CORE_MASKED",
     f"masked or non-finite pixels within {_t.CORE_RADIUS} px of the input position: "
     "results unreliable"),
    (NO_OVERLAP, "NO_OVERLAP", "no usable pixel in the stamp: results are NaN"),
    (LARGE_SHIFT, "LARGE_SHIFT",
     f"fitted position more than max_shift (default {_t.DEFAULT_MAX_SHIFT:g} px) from the "
     "input position"),
    (OUTSIDE_TRAINING, "OUTSIDE_TRAINING",
     f"predicted S/N outside the training range (below {_t.SNR_RANGE[0]:g} or above "
     f"{_t.SNR_RANGE[1]:g})"),
    (NONPOSITIVE_FLUX, "NONPOSITIVE_FLUX", "fitted flux is zero or negative"),
    (SATURATED, "SATURATED",
     f"a pixel within {_t.SATURATION_RADIUS} px of the source reaches the saturation level"),
    (NO_SOURCE_NOISE, "NO_SOURCE_NOISE",
     "no error map, gain or sky level told the network the sources' Poisson noise: "
     "flux_err is too small for bright sources"),
    (COMPACT, "COMPACT",
     "sharper than any PSF the network was trained on (the peak pixel holds over "
     f"{100 * _t.COMPACT_PEAK_FRACTION:g} % of the central 3x3 sum at S/N > "
     f"{_t.COMPACT_MIN_SNR:g}; with a psf_model, also over halfway from the PSF's own "
     "fraction to 100 %): a cosmic ray, hot pixel or artefact"),
    (PSF_MISMATCH, "PSF_MISMATCH",
     "the image's PSF is far from any the network was trained on: on its bright isolated "
     f"stars a large aperture holds over {_t.APERTURE_FACTOR_RANGE[1]:g}x (or under "
     f"{_t.APERTURE_FACTOR_RANGE[0]:g}x) the network's flux, so every "
     "flux of the image is biased (set on all rows; see the aperture_correction meta)"),
    (BLENDED, "BLENDED",
     f"another input source lies within {_t.CORE_RADIUS} px (the stamp's core); or, with a "
     "PSF model, overlaps this one so much that their joint PSF fit multiplies the flux "
     f"variance by more than {_t.BLEND_INFLATION:g}, or holds light the PSF does not "
     "explain (an unlisted neighbour, a galaxy). The errors include what is not split: "
     f"{_FRACTIONS.get(_t.SHARED_LIGHT_FRACTION, f'{_t.SHARED_LIGHT_FRACTION:g}x')} the "
     "unsplit neighbours' flux, or, where the light is unexplained, "
     f"{_t.UNEXPLAINED_ERROR_PER_EPS:g}x the core's PSF-model error times the flux"),
    (NO_POSITION, "NO_POSITION",
     "the input position is blank (a masked catalogue cell) or not finite: results are NaN"),
)


def decode_flags(flags, return_bit_values=False):
    """
    Names of the flags set in ``flags``.

    The call of photutils' `~photutils.psf.decode_psf_flags`; the names and
    bits are ours (see `FLAG_DEFINITIONS`).

    Parameters
    ----------
    flags : int or array of int
    return_bit_values : bool, optional
        Return the bit values (ints) set instead of the names.

    Returns
    -------
    list of str (or int), or list of lists for an array
    """
    arr = np.asarray(flags)
    if arr.ndim == 0:
        return [bit if return_bit_values else name
                for bit, name, _ in FLAG_DEFINITIONS if int(arr) & bit]
    return [decode_flags(f, return_bit_values) for f in arr]


def flag_table():
    """The flag definitions as an `~astropy.table.Table` (bit, name, description)."""
    from astropy.table import Table

    bits, names, descr = zip(*FLAG_DEFINITIONS)
    return Table([bits, names, descr], names=("bit", "name", "description"))
