"""
The thresholds behind the flags, in one place (private).

The code that sets a flag and the flag's description in `asidfe_phot.flags`
both read them here, so the documented numbers cannot drift from the ones
used. Plain numbers only: `asidfe_phot.flags` imports this module and must
stay importable without onnxruntime.
"""

__all__ = []  # private module

#: Default ``max_shift`` (px) of `~asidfe_phot.MLPhotometry`: a fitted position further
#: from the input is flagged LARGE_SHIFT.
DEFAULT_MAX_SHIFT = 2.0
#: Predicted flux S/N range of the training set; outside it a row is OUTSIDE_TRAINING.
SNR_RANGE = (2.0, 3e4)
#: Half-size (px) of the stamp's core (Chebyshev distance from the reference pixel): a
#: masked pixel in it is CORE_MASKED, another input source in it makes both BLENDED.
CORE_RADIUS = 3
#: Half-size (px) of the box whose pixels are checked against the saturation level.
SATURATION_RADIUS = 2
#: Peak / central 3x3 sum above which a source is sharper than any trained PSF (the
#: narrowest, FWHM 1 px since v4, peak at most ~0.64), checked where the 3x3 sum has
#: S/N > COMPACT_MIN_SNR: COMPACT.
COMPACT_PEAK_FRACTION = 0.7
COMPACT_MIN_SNR = 10.0
#: A measured aperture correction outside this range is not trusted (crowding, galaxies,
#: bad sky), and beyond it by 3 standard errors the image is PSF_MISMATCH. PSFs the
#: network never saw can need 1.3 (an obstructed Airy pattern, Moffat beta 1.5).
APERTURE_FACTOR_RANGE = (0.8, 1.5)
#: Flux-variance inflation by overlapping neighbours beyond which a source is BLENDED.
BLEND_INFLATION = 2.0
#: A source's own PSF-model error counts from this (and 3x the image's): galaxies, blends.
OWN_MODEL_ERROR_MIN = 0.1
#: Flux error (relative) and position error (in FWHM) per unit of a source's own core
#: model error, where its core holds light the PSF does not explain (BLENDED).
UNEXPLAINED_ERROR_PER_EPS = 2.0
#: Fraction of unsplit core neighbours' flux (and of the distance to the furthest of
#: them) that a source's flux (position) error covers: an equal pair measured as one
#: reads twice each flux, and the measured centre lies between the two.
SHARED_LIGHT_FRACTION = 0.5
#: Pixels this many sigma below the background are bad (DAOPHOT's low good datum is 7).
LOW_BAD_SIGMA = 10.0
#: Input sources closer than this (px) give the network the same stamp to within a pixel:
#: each reads the pair's light, which is then shared (further apart, a source's reading
#: may be mostly its own, e.g. 2,913 for a true 2,952 beside a 1,648 at 3.8 px, FWHM 3).
SAME_STAMP_SEPARATION = 1.0
