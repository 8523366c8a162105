"""
ds9 region files of measured sources (private; written by ``asidfe-phot --regions``).

ds9's ``image`` coordinates are 1-based (the centre of the first pixel is 1, 1), the
FITS convention; the package's are 0-based (photutils'), so 1 is added to each
position.
"""

import numpy as np

from asidfe_phot.flags import decode_flags

__all__ = []  # private module

#: Circle radius in pixels.
RADIUS = 5.0
CLEAN_COLOUR = "green"
FLAGGED_COLOUR = "red"


def _number(value):
    return f"{value:.3f}"


def ds9_regions(tbl, *, title="", radius=RADIUS):
    """
    The text of a ds9 region file: a circle at each source's fitted position, green
    when unflagged; red with the flag names as its text when flagged; dashed at the
    input position where there is no fit; none where there is no position at all.
    """
    lines = ["# Region file format: DS9 version 4.1",
             f"# {title}" if title else "# asidfe_phot measurements",
             "# circles at (x_fit + 1, y_fit + 1): ds9 image pixels are 1-based; "
             f"{CLEAN_COLOUR}: no flag, {FLAGGED_COLOUR}: flagged (names as text), "
             "dashed: no fit (input position)",
             f"global color={CLEAN_COLOUR} width=1 font=\"helvetica 9 normal roman\" "
             "select=1 edit=0 move=0 delete=1 include=1 source=1",
             "image"]
    x_fit, y_fit = (np.asarray(tbl[c], dtype=float) for c in ("x_fit", "y_fit"))
    x_init, y_init = (np.asarray(tbl[c], dtype=float) for c in ("x_init", "y_init"))
    flags = np.asarray(tbl["flags"])
    names = decode_flags(flags)
    for k in range(len(tbl)):
        fitted = np.isfinite(x_fit[k]) and np.isfinite(y_fit[k])
        x, y = (x_fit[k], y_fit[k]) if fitted else (x_init[k], y_init[k])
        if not (np.isfinite(x) and np.isfinite(y)):
            lines.append(f"# id {tbl['id'][k]}: no position ({' '.join(names[k])})")
            continue
        props = [] if fitted else ["dash=1"]
        if flags[k]:
            props += [f"color={FLAGGED_COLOUR}", f"text={{{' '.join(names[k])}}}"]
        comment = f" # {' '.join(props)}" if props else ""
        lines.append(f"circle({_number(x + 1)},{_number(y + 1)},{radius:g}){comment}")
    return "\n".join(lines) + "\n"
