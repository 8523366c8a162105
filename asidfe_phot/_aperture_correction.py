"""
Per-image aperture correction: the light beyond the network's stamp.

The network sees a 32x32 stamp. Light in PSF wings and halos beyond it (and
any PSF shape it was not trained on) biases its fluxes by a factor that is the
same for every star of an image. As in classical photometry, that factor is
measured on the image's own bright, isolated stars: the ratio of a large
aperture's flux (radius ``TOTAL_RADIUS_HALF_LIGHT`` half-light radii, a local
sky annulus around it) to the network's flux, combined over stars as an
inverse-variance mean with 3-sigma clipping. It is applied only where it is
measured well.

The big aperture also holds light from sources that are not in the input
table (galaxies, uncatalogued stars): a star whose aperture or sky annulus
shows any significant local maximum beyond the star's own core is not used
(the image decides, not the catalogue), and the ratios are clipped around
their median by their robust scatter, so a minority of contaminated stars
cannot pull the factor. Too few clean stars and no factor is applied.
"""

import math

import numpy as np

from asidfe_phot import _stamps
from asidfe_phot import flags as _flags
from asidfe_phot._thresholds import APERTURE_FACTOR_RANGE

__all__ = []  # private module

#: Radius of the "total" aperture in half-light radii (~5 FWHM for a Gaussian, the
#: truncation radius of PSFEx-like models).
TOTAL_RADIUS_HALF_LIGHT = 10.0
#: Bounds of that radius (px): at least the stamp's half-size, at most what a frame allows.
RADIUS_RANGE = (6.0, 40.0)
#: Sky annulus: from r + SKY_GAP to r + SKY_GAP + SKY_WIDTH (px).
SKY_GAP, SKY_WIDTH = 3.0, 8.0
#: Stars used: the brightest unflagged ones with S/N (`measure`'s ``snr``) above MIN_SNR.
MIN_SNR, MAX_STARS = 15.0, 200
#: A catalogued neighbour inside the aperture with more than this fraction of the
#: star's flux excludes the star.
MAX_NEIGHBOUR_FRACTION = 0.02
#: Contamination: a local maximum (3x3 mean) beyond CLEAN_RADIUS_HALF_LIGHT half-light radii
#: of the star, within its sky annulus, above CONTAMINATION_SNR times the noise of a 3x3
#: mean and CONTAMINATION_PEAK of the star's own peak, marks light from another source.
CLEAN_RADIUS_HALF_LIGHT, CONTAMINATION_SNR, CONTAMINATION_PEAK = 5.0, 5.0, 0.003
#: Star-to-star scatter of the ratio beyond the pixel noise (PSF variation, faint neighbours).
STAR_SCATTER = 0.01
#: Fewer usable stars than this, or a larger standard error, and no correction is applied.
MIN_STARS, MAX_ERROR = 10, 0.02
#: A measured factor outside this range is not trusted (crowding, galaxies, bad sky). PSFs
#: the network never saw can need 1.3 (an obstructed Airy pattern, Moffat beta 1.5). Shared
#: with the PSF_MISMATCH flag's description.
FACTOR_RANGE = APERTURE_FACTOR_RANGE
#: In "auto" mode the factor is applied only when it differs from 1 by more than
#: SIGNIFICANCE standard errors and MIN_CHANGE: the network's own implicit correction
#: stands unless the image shows it wrong (on synthetic frames the measurement scatters by
#: ~1.6 % around the true factor, from faint neighbours and the sky).
SIGNIFICANCE, MIN_CHANGE = 3.0, 0.01


def _growth(image, bad, x, y, radii):
    """Background-subtracted fluxes of ``x, y`` in circular apertures of ``radii``."""
    from photutils.aperture import CircularAperture, aperture_photometry

    positions = np.column_stack([x, y])
    apertures = [CircularAperture(positions, r=r) for r in radii]
    tbl = aperture_photometry(image, apertures, mask=bad, method="exact")
    return np.column_stack([np.asarray(tbl[f"aperture_sum_{i}"], float)
                            for i in range(len(radii))])


def _aperture_sum(image, mask, cx, cy, r):
    """
    `_growth` of one aperture inside ``image``, with ``mask``: photutils' exact weights and
    sum (`~photutils.geometry.circular_overlap_grid` on the aperture's bounding box),
    without its objects per aperture and position.
    """
    from photutils.geometry import circular_overlap_grid

    x0, x1 = math.floor(cx - r + 0.5), math.ceil(cx + r + 0.5)
    y0, y1 = math.floor(cy - r + 0.5), math.ceil(cy + r + 0.5)
    weights = circular_overlap_grid(x0 - 0.5 - cx, x1 - 0.5 - cx, y0 - 0.5 - cy, y1 - 0.5 - cy,
                                    x1 - x0, y1 - y0, r, 1, 1)
    keep = (weights > 0) & ~mask[y0:y1, x0:x1]
    return (image[y0:y1, x0:x1] * weights)[keep].sum()


def _half_light_radii(local, radii):
    """
    Per star of ``local`` (`_Neighbourhoods`), where its growth curve at ``radii`` (the
    apertures' sums over the last one's, never decreasing) reaches 0.5: ``np.interp(0.5,
    np.maximum.accumulate(curve), radii)``, the curve taken outwards only until it does
    (the rest cannot change that).
    """
    out = np.empty(local.x.size)
    for i, (cx, cy) in enumerate(zip(local.x, local.y)):
        total = _aperture_sum(local.image, local.mask, cx, cy, radii[-1])
        curve = []
        for r in radii[:-1]:
            curve.append(_aperture_sum(local.image, local.mask, cx, cy, r) / total)
            if np.maximum.accumulate(curve)[-1] > 0.5:
                break
        else:
            curve.append(total / total)
        out[i] = np.interp(0.5, np.maximum.accumulate(curve), radii[:len(curve)])
    return out


def _local_sky(image, bad, x, y, r_in, r_out, sigma=3.0, maxiters=5):
    """
    Sigma-clipped median and standard deviation in annuli: photutils' ``ApertureStats(image,
    CircularAnnulus(..., r_in, r_out), mask=bad, sigma_clip=SigmaClip(sigma, maxiters))``
    ``median`` and ``std`` (its "center" pixels, astropy's clipping with numpy's nanmedian
    and nanstd), without its per-aperture objects and masked arrays.
    """
    from photutils.geometry import circular_overlap_grid

    ny, nx = image.shape
    median, std = np.full(x.size, np.nan), np.full(x.size, np.nan)
    for i, (cx, cy) in enumerate(zip(x, y)):
        x0, x1 = math.floor(cx - r_out + 0.5), math.ceil(cx + r_out + 0.5)
        y0, y1 = math.floor(cy - r_out + 0.5), math.ceil(cy + r_out + 0.5)
        edges = (x0 - 0.5 - cx, x1 - 0.5 - cx, y0 - 0.5 - cy, y1 - 0.5 - cy, x1 - x0, y1 - y0)
        inside = (circular_overlap_grid(*edges, r_out, 0, 1)
                  - circular_overlap_grid(*edges, r_in, 0, 1)) > 0
        # The part of the box on the image.
        top, left = max(y0, 0), max(x0, 0)
        inside = inside[top - y0 : min(y1, ny) - y0, left - x0 : min(x1, nx) - x0]
        box = image[top : min(y1, ny), left : min(x1, nx)].astype(float)
        if bad is not None:
            inside &= ~bad[top : min(y1, ny), left : min(x1, nx)]
        values = box[inside]
        values = values[np.isfinite(values)]
        if not values.size:
            continue
        # astropy's SigmaClip without an axis: clip the survivors until none changes; the
        # result is every value within the last bounds.
        kept = values
        for _ in range(maxiters):
            centre, spread = np.nanmedian(kept), np.nanstd(kept)
            low, high = centre - spread * sigma, centre + spread * sigma
            size = kept.size
            kept = kept[(kept >= low) & (kept <= high)]
            if kept.size == size:
                break
        final = values[(values >= low) & (values <= high)]
        if final.size:
            median[i], std[i] = np.median(final), np.std(final)
    return median, std


def _contaminated(image, bad, x, y, r_clean, r_out, noise):
    """
    Whether another source's light lies between ``r_clean`` and ``r_out`` of each star.

    Looks for local maxima of the 3x3 mean image (5x5 neighbourhood) in that
    annulus, brighter than `CONTAMINATION_SNR` times the 3x3 mean's noise and
    `CONTAMINATION_PEAK` of the star's peak. A star's own wings and halo fall
    monotonically and have none; galaxies and other stars do.
    """
    from scipy import ndimage

    half = int(np.ceil(r_out)) + 2
    size = 2 * half + 1
    g = np.arange(size) - half
    out = np.zeros(x.size, bool)
    for i, (cx, cy, sigma) in enumerate(zip(x, y, noise)):
        ix, iy = int(round(cx)), int(round(cy))
        box = image[iy - half:iy + half + 1, ix - half:ix + half + 1].astype(np.float64)
        if box.shape != (size, size):
            out[i] = True
            continue
        if bad is not None:
            box = np.where(bad[iy - half:iy + half + 1, ix - half:ix + half + 1], 0.0, box)
        smooth = ndimage.uniform_filter(box, 3, mode="nearest")
        peaks = smooth == ndimage.maximum_filter(smooth, 5, mode="nearest")
        r = np.hypot(g[None, :] - (cx - ix), g[:, None] - (cy - iy))
        threshold = max(CONTAMINATION_SNR * sigma / 3.0, CONTAMINATION_PEAK * smooth[half, half])
        out[i] = bool(np.any(peaks & (r > r_clean) & (r < r_out) & (smooth > threshold)))
    return out


class _Neighbourhoods:
    """
    The pixels within ``half`` of some stars (their reference pixels), side by side in one
    small image: what photutils' apertures (of radius up to ``half - 2``) and `_contaminated`
    (boxes up to ``half``) read around them, without the whole image.

    ``image`` (2-D array or `~asidfe_phot._stamps.LazyImage`) is cut once; ``mask`` marks
    its bad pixels, pixels off it and the gaps; ``x, y`` are the stars' positions in the
    small image, moved by whole, even numbers of pixels (so that rounding half to even
    gives the same pixel).
    """

    def __init__(self, image, bad, x, y, half):
        size = 2 * half + 1
        stamps, inside = _stamps.cutout_stamps(image, x, y, size)
        masked = ~inside
        if bad is not None:
            masked |= _stamps.cutout_stamps(bad, x, y, size, fill=True)[0]
        n = x.size
        across = max(1, int(np.ceil(np.sqrt(n))))
        cell = size + 1  # room to make each move even
        ox, oy = _stamps.stamp_origin(x, size), _stamps.stamp_origin(y, size)
        cx = np.arange(n) % across * cell
        cy = np.arange(n) // across * cell
        cx, cy = cx + (ox - cx) % 2, cy + (oy - cy) % 2
        self.image = np.zeros((-(-n // across) * cell, across * cell), dtype=stamps.dtype)
        self.mask = np.ones(self.image.shape, dtype=bool)
        rows = (cy[:, None] + np.arange(size))[:, :, None]
        cols = (cx[:, None] + np.arange(size))[:, None, :]
        self.image[rows, cols] = stamps
        self.mask[rows, cols] = masked
        self.x, self.y = x - (ox - cx), y - (oy - cy)


def _off_image(shape, x, y, half):
    """Whether the ``half`` box around each rounded position leaves the image."""
    ix = np.array([int(round(v)) for v in x], dtype=np.int64)
    iy = np.array([int(round(v)) for v in y], dtype=np.int64)
    ny, nx = shape
    return (ix - half < 0) | (iy - half < 0) | (ix + half + 1 > nx) | (iy + half + 1 > ny)


def _weighted_clipped_mean(values, errors, sigma=3.0, maxiters=10):
    """
    Inverse-variance mean of ``values``, iteratively rejecting > ``sigma`` outliers.

    Rejection is first around the median by the robust (MAD) scatter, so a
    minority of outliers with small errors cannot drag the mean.
    """
    keep = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    if keep.sum() >= 3:
        med = np.median(values[keep])
        mad = 1.4826 * np.median(np.abs(values[keep] - med))
        keep &= np.abs(values - med) <= sigma * np.hypot(mad, errors)
    mean = np.nan
    for _ in range(maxiters):
        w = 1.0 / errors[keep] ** 2
        mean = np.sum(w * values[keep]) / np.sum(w)
        new = keep & (np.abs(values - mean) <= sigma * errors)
        if new.sum() < 2 or np.array_equal(new, keep):
            break
        keep = new
    w = 1.0 / errors[keep] ** 2
    return float(mean), float(1.0 / np.sqrt(np.sum(w))), int(keep.sum())


def mismatch(measured):
    """Whether the factor lies outside `FACTOR_RANGE` by more than 3 standard errors."""
    if measured["error"] is None or measured["n_stars"] < MIN_STARS:
        return False
    lo, hi = FACTOR_RANGE
    margin = SIGNIFICANCE * measured["error"]
    return bool(measured["factor"] - margin > hi or measured["factor"] + margin < lo)


def decide(measured, mode):
    """
    The factor to apply (``None`` for none) and why, given `measure`'s result.

    ``mode``: ``"auto"`` (apply when well measured and significant), ``True``
    (apply when well measured).
    """
    if measured["reason"] is not None:
        return None, f"not applied: {measured['reason']}"
    change = abs(measured["factor"] - 1.0)
    if mode == "auto" and change <= max(SIGNIFICANCE * measured["error"], MIN_CHANGE):
        return None, (f"not applied: {measured['factor']:.4f} +- {measured['error']:.4f} is "
                      f"consistent with 1 (auto mode)")
    return measured["factor"], "applied"


def measure(image, bad, x, y, flux, flux_err, usable, snr=None):
    """
    The image's aperture correction (total / network flux) from its bright stars.

    Parameters
    ----------
    image : 2-D array or `~asidfe_phot._stamps.LazyImage`
        Background-subtracted image; only the stars' neighbourhoods are read.
    bad : 2-D bool array or None
    x, y, flux, flux_err : 1-D arrays
        The network's results for every input source (NaN where it has none).
    usable : 1-D bool array
        Rows that may serve as reference stars (e.g. unflagged).
    snr : 1-D array, optional
        S/N that selects the reference stars (default ``flux / flux_err``; the
        stamps' measured core S/N is better where the network is far off).

    Returns
    -------
    dict
        ``factor``, ``error``, ``n_stars``, ``radius`` (px), ``n_contaminated``
        (stars left out for other sources' light) and ``reason`` (``None`` when
        the factor is measured well, else why it is not).
    """
    out = {"factor": 1.0, "error": None, "n_stars": 0, "radius": None, "reason": None,
           "n_contaminated": 0}
    if snr is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = flux / flux_err
    ok = usable & np.isfinite(x) & np.isfinite(y) & (flux > 0) & (snr > MIN_SNR)
    ny, nx = image.shape
    candidates = np.flatnonzero(ok)
    candidates = candidates[np.argsort(-flux[candidates])][:MAX_STARS]
    if candidates.size < MIN_STARS:
        out["reason"] = f"{candidates.size} stars with S/N > {MIN_SNR:g} (need {MIN_STARS})"
        return out
    # Half-light radius of the light inside the stamp's radius (independent of the network's
    # flux, whose bias is what is measured).
    radii = np.arange(0.5, 16.01, 0.5)
    local = _Neighbourhoods(image, bad, x[candidates], y[candidates], int(radii[-1]) + 2)
    r_half = _half_light_radii(local, radii)
    radius = float(np.clip(TOTAL_RADIUS_HALF_LIGHT * np.median(r_half), *RADIUS_RANGE))
    out["radius"] = radius
    # Stars whose aperture and sky annulus lie inside the image, without bright neighbours.
    reach = radius + SKY_GAP + SKY_WIDTH
    xc, yc = x[candidates], y[candidates]
    inside = (xc >= reach) & (yc >= reach) & (xc <= nx - 1 - reach) & (yc <= ny - 1 - reach)
    fin = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    others_x, others_y, others_f = x[fin], y[fin], np.maximum(flux[fin], 0.0)
    isolated = np.ones(candidates.size, bool)
    # Each candidate's neighbours from a tree (the sources near it, in input order: the
    # sums are the same as over a mask of all sources, at a fraction of the cost).
    from scipy.spatial import cKDTree

    tree = cKDTree(np.column_stack([others_x, others_y]))
    nearby = tree.query_ball_point(np.column_stack([xc, yc]), radius + 1.0 + 1e-6)
    for i, (cx, cy, cf) in enumerate(zip(xc, yc, flux[candidates])):
        j = np.sort(np.asarray(nearby[i], dtype=np.intp))
        d2 = (others_x[j] - cx) ** 2 + (others_y[j] - cy) ** 2
        near = (d2 > 0.25) & (d2 < (radius + 1.0) ** 2)
        isolated[i] = others_f[j][near].sum() <= MAX_NEIGHBOUR_FRACTION * cf
    stars = candidates[inside & isolated]
    out["n_stars"] = int(stars.size)
    if stars.size < MIN_STARS:
        out["reason"] = (f"{stars.size} isolated bright stars with room for a {radius:.1f} px "
                         f"aperture (need {MIN_STARS})")
        return out
    box = int(np.ceil(reach)) + 2  # the half-size of `_contaminated`'s boxes
    local = _Neighbourhoods(image, bad, x[stars], y[stars], box + 1)
    sky, sky_std = _local_sky(local.image, local.mask, local.x, local.y, radius + SKY_GAP,
                              reach)
    # Light from sources not in the input table (galaxies, uncatalogued stars), seen on the
    # image itself (a box that leaves the image counts as contaminated).
    dirty = _contaminated(local.image, local.mask, local.x, local.y,
                          CLEAN_RADIUS_HALF_LIGHT * np.median(r_half), reach, sky_std)
    dirty |= _off_image((ny, nx), x[stars], y[stars], box)
    out["n_contaminated"] = int(dirty.sum())
    stars, sky, sky_std = stars[~dirty], sky[~dirty], sky_std[~dirty]
    local_x, local_y = local.x[~dirty], local.y[~dirty]
    if stars.size < MIN_STARS:
        out["n_stars"] = int(stars.size)
        out["reason"] = (f"{stars.size} bright stars free of other sources' light within their "
                         f"{radius:.1f} px aperture and sky annulus (need {MIN_STARS}; "
                         f"{int(dirty.sum())} contaminated)")
        return out
    area = np.pi * radius**2
    total = np.array([_aperture_sum(local.image, local.mask, cx, cy, radius)
                      for cx, cy in zip(local_x, local_y)]) - sky * area
    ratio = total / flux[stars]
    # Pixel noise of the big aperture, its sky estimate, the network flux's own error, and a
    # floor for what differs from star to star (PSF variation, faint neighbours).
    n_sky = np.pi * ((radius + SKY_GAP + SKY_WIDTH) ** 2 - (radius + SKY_GAP) ** 2)
    noise = sky_std * np.sqrt(area + area**2 / n_sky)
    ratio_err = np.hypot(np.hypot(noise / flux[stars], ratio * flux_err[stars] / flux[stars]),
                         STAR_SCATTER)
    factor, error, n_used = _weighted_clipped_mean(ratio, ratio_err)
    out.update(factor=factor, error=error, n_stars=n_used)
    if not error <= MAX_ERROR:
        out["reason"] = f"its standard error {error:.3f} exceeds {MAX_ERROR}"
    elif not FACTOR_RANGE[0] <= factor <= FACTOR_RANGE[1]:
        out["reason"] = f"{factor:.3f} lies outside {FACTOR_RANGE}"
    return out


def apply(mode, prepared, res):
    """
    Apply the per-image aperture correction of ``mode`` (`~asidfe_phot.MLPhotometry`'s
    ``aperture_correction``) to ``res`` in place; returns the meta entries.
    """
    if mode is False:
        return {"aperture_correction": 1.0, "aperture_correction_note": "off"}
    if mode is True or mode == "auto":
        measured = measure(
            prepared.stamp_view().subtracted, prepared.bad, res["x_fit"], res["y_fit"],
            res["flux_fit"],
            res["flux_err"], (res["flags"] & ~_flags.NO_SOURCE_NOISE) == 0,
            snr=res["snr_core"])
        factor, note = decide(measured, mode)
        if mismatch(measured):
            res["flags"] |= _flags.PSF_MISMATCH
        error = measured["error"] if factor is not None else None
        info = {"aperture_correction_measured": measured["factor"],
                "aperture_correction_measured_err": measured["error"],
                "aperture_correction_nstars": measured["n_stars"],
                "aperture_correction_ncontaminated": measured["n_contaminated"],
                "aperture_correction_radius": measured["radius"]}
    else:
        factor, error, note, info = float(mode), None, "given", {}
    if factor is not None:
        flux = res["flux_fit"]
        # The factor's own error is common to all stars of the image; it is added so
        # that each flux_err still covers the total flux.
        res["flux_err"] = np.hypot(factor * res["flux_err"],
                                   0.0 if error is None else error * flux)
        res["flux_fit"] = factor * flux
    return {"aperture_correction": 1.0 if factor is None else factor,
            "aperture_correction_note": note, **info}
