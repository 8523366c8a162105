"""
Source detection as the ``asidfe-phot --find`` run does it (private): photutils'
`~photutils.detection.DAOStarFinder` at a threshold in units of the image's
sigma-clipped rms. Shared by the command line and `asidfe_phot.artificial_stars`, so
an artificial-star test detects exactly as the user's run.
"""

import numpy as np

__all__ = []  # private module


def background_rms(image):
    """Sigma-clipped (3 sigma) standard deviation of the finite pixels of ``image``."""
    from astropy.stats import sigma_clipped_stats

    finite = np.asarray(image)[np.isfinite(image)]
    if not finite.size:
        msg = "the image has no finite pixel"
        raise ValueError(msg)
    _, _, std = sigma_clipped_stats(finite, sigma=3.0, maxiters=10)
    return float(std)


def make_finder(image, fwhm, nsigma, *, names=("fwhm", "threshold")):
    """
    A DAOStarFinder of kernel ``fwhm`` (px) and threshold ``nsigma`` x the image's rms.

    ``names``: how the two parameters are called in error messages (the command line
    says ``--fwhm``). Returns the finder and its threshold (data units).
    """
    from photutils.detection import DAOStarFinder

    if not fwhm > 0:
        msg = f"{names[0]} must be positive, got {fwhm}"
        raise ValueError(msg)
    if not nsigma > 0:
        msg = f"{names[1]} must be positive, got {nsigma}"
        raise ValueError(msg)
    rms = background_rms(image)
    threshold = nsigma * rms if rms > 0 else nsigma
    return DAOStarFinder(threshold=threshold, fwhm=fwhm), threshold


def finder_positions(finder, image, bad, unit=None):
    """
    Positions found by ``finder`` on the background-subtracted ``image`` (data units), and
    the finder's table (None when it found nothing).

    ``unit``: the data's unit: the finder then gets a Quantity (photutils' finders want a
    Quantity threshold for one); a finder built with a plain threshold still gets plain
    values.
    """
    from asidfe_phot._validation import find_position_columns

    if unit is None:
        found = finder(image, mask=bad)
    else:
        import astropy.units as u

        try:
            found = finder(image * unit, mask=bad)
        except (u.UnitsError, TypeError, ValueError):
            found = finder(image, mask=bad)
    if found is None or not len(found):
        return np.zeros(0), np.zeros(0), found
    xname, yname = find_position_columns(found)
    if xname is None or yname is None:
        msg = (f"the finder's table has no x/y columns under photutils' names "
               f"(got {found.colnames})")
        raise ValueError(msg)
    return (np.asarray(found[xname], dtype=float), np.asarray(found[yname], dtype=float),
            found)
