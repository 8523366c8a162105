"""
Bit flags of the ``flags`` column returned by `~asidfe_phot.MLPhotometry`.

Test a bit with ``(tbl['flags'] & asidfe_phot.flags.EDGE) != 0``; list the
names set on a row with `decode_flags`. Bits are never renumbered.
"""

import numpy as np

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

#: The registry: (bit, name, description); docs and decode_flags derive from it.
FLAG_DEFINITIONS = (
    (EDGE, "EDGE", "the 32x32 stamp extends beyond the image; missing pixels set to background"),
    (MASKED, "MASKED", "the stamp holds masked or non-finite pixels; they are set to background"),
    (CORE_MASKED, "CORE_MASKED", "masked or non-finite pixels within 3 px of the input position: "
                       "results unreliable"),
    (NO_OVERLAP, "NO_OVERLAP", "no usable pixel in the stamp: results are NaN"),
    (LARGE_SHIFT, "LARGE_SHIFT",
     "fitted position more than max_shift (default 2 px) from the input position"),
    (OUTSIDE_TRAINING, "OUTSIDE_TRAINING",
     "predicted S/N outside the training range (below 2 or above 30000)"),
    (NONPOSITIVE_FLUX, "NONPOSITIVE_FLUX", "fitted flux is zero or negative"),
    (SATURATED, "SATURATED", "a pixel within 2 px of the source reaches the saturation level"),
    (NO_SOURCE_NOISE, "NO_SOURCE_NOISE",
     "no error map, gain or sky level told the network the sources' Poisson noise: "
     "flux_err is too small for bright sources"),
    (COMPACT, "COMPACT",
     "sharper than any PSF the network was trained on (the peak pixel holds over 70 % of the "
     "central 3x3 sum at S/N > 10): a cosmic ray, hot pixel or artefact"),
    (PSF_MISMATCH, "PSF_MISMATCH",
     "the image's PSF is far from any the network was trained on: on its bright isolated "
     "stars a large aperture holds over 1.5x (or under 0.8x) the network's flux, so every "
     "flux of the image is biased (set on all rows; see the aperture_correction meta)"),
    (BLENDED, "BLENDED",
     "another input source lies within 3 px (the stamp's core); or, with a PSF model, "
     "overlaps this one so much that their joint PSF fit more than doubles the flux "
     "variance, or holds light the PSF does not explain (an unlisted neighbour, a "
     "galaxy). The errors include what is not split: half the unsplit neighbours' "
     "flux, or half the flux where the light is unexplained"),
    (NO_POSITION, "NO_POSITION",
     "the input position is blank (a masked catalogue cell) or not finite: results are NaN"),
)


def decode_flags(flags):
    """
    Names of the flags set in ``flags``.

    Parameters
    ----------
    flags : int or array of int

    Returns
    -------
    list of str, or list of lists of str for an array
    """
    arr = np.asarray(flags)
    if arr.ndim == 0:
        return [name for bit, name, _ in FLAG_DEFINITIONS if int(arr) & bit]
    return [decode_flags(f) for f in arr]


def flag_table():
    """The flag definitions as an `~astropy.table.Table` (bit, name, description)."""
    from astropy.table import Table

    bits, names, descr = zip(*FLAG_DEFINITIONS)
    return Table([bits, names, descr], names=("bit", "name", "description"))
