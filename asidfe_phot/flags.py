"""
Bit flags of the ``flags`` column returned by `~asidfe_phot.MLPhotometry`.

Test a bit with ``(tbl['flags'] & asidfe_phot.flags.EDGE) != 0``; list the
names set on a row with `decode_flags`. Bits are never renumbered.
"""

import numpy as np

__all__ = ["FLAG_DEFINITIONS", "EDGE", "MASKED", "CORE_MASKED", "NO_OVERLAP", "LARGE_SHIFT",
           "OUTSIDE_TRAINING", "NONPOSITIVE_FLUX", "SATURATED", "NO_SOURCE_NOISE",
           "decode_flags", "flag_table"]

#: The single registry: (bit, name, description).
FLAG_DEFINITIONS = (
    (1, "EDGE", "the 32x32 stamp extends beyond the image; missing pixels set to background"),
    (2, "MASKED", "the stamp holds masked or non-finite pixels; they are set to background"),
    (4, "CORE_MASKED", "masked or non-finite pixels within 3 px of the input position: "
                       "results unreliable"),
    (8, "NO_OVERLAP", "no usable pixel in the stamp: results are NaN"),
    (16, "LARGE_SHIFT", "fitted position more than 2 px from the input position "
                        "(outside the offsets seen in training)"),
    (32, "OUTSIDE_TRAINING", "predicted S/N outside the training range (below 2 or above "
                             "30000) or a non-positive noise scale"),
    (64, "NONPOSITIVE_FLUX", "fitted flux is zero or negative"),
    (128, "SATURATED", "a pixel within 2 px of the source reaches the saturation level"),
    (256, "NO_SOURCE_NOISE", "no error map, gain or sky level told the network the sources' "
                             "Poisson noise: flux_err is too small for bright sources"),
)

for _bit, _name, _ in FLAG_DEFINITIONS:
    globals()[_name] = _bit
del _bit, _name


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
