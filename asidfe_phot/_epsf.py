"""
The ePSF of ``psf_model="auto"`` (private; public as `asidfe_phot.psf.build_epsf` and
`asidfe_phot.psf.select_psf_stars`): point sources chosen on the image itself, not from
the input catalogue, and photutils' `~photutils.psf.EPSFBuilder` made fast, recentred on
the first moment and normalised to the stars' total light.
"""

import contextlib
import time
import warnings

import numpy as np
from scipy import ndimage

from asidfe_phot._validation import user_stacklevel
from asidfe_phot.exceptions import TooFewPSFStarsWarning

__all__ = []  # private module

#: Oversampling of the ePSF built by ``psf_model="auto"`` (see `build_epsf`).
OVERSAMPLING = 2
_FWHM_PER_HFR = 2.0  # a Gaussian's FWHM / half-flux radius


def _half_flux_radius(stamps, radius, fraction=0.5):
    """
    Half-flux radius (px) of background-subtracted stamps within ``radius``.

    Pixels are taken in order of distance from the central pixel, the k-th
    standing for the disc of area k (radius ``sqrt(k / pi)``), so the radius
    is continuous even when the central pixel holds half the light
    (undersampled images), where pixel-centre distances jump from 0 to 1.
    """
    n, size, _ = stamps.shape
    c = size // 2
    g = np.arange(size) - c
    r = np.hypot(g[:, None], g[None, :])
    order = np.argsort(r.ravel(), kind="stable")
    keep = r.ravel()[order] <= radius
    flux = np.clip(stamps.reshape(n, -1)[:, order][:, keep], 0, None)
    cum = np.cumsum(flux, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = cum / cum[:, -1:]
    edges = np.sqrt(np.arange(1, frac.shape[1] + 1) / np.pi)
    k = np.argmax(frac >= fraction, axis=1)
    prev_frac = np.where(k > 0, frac[np.arange(n), k - 1], 0.0)
    prev_edge = np.where(k > 0, edges[k - 1], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (fraction - prev_frac) / (frac[np.arange(n), k] - prev_frac)
    # Within the first pixel the enclosed light grows as the area.
    first = k == 0
    t = np.where(first, np.sqrt(np.clip(fraction / frac[:, 0], 0, 1)), t)
    return prev_edge + t * (edges[k] - prev_edge)


#: Image rows per strip of the peak search (a strip's S/N and its maximum filter).
_STRIP_ROWS = 512


def _snr_peaks(data, error, bad, min_snr):
    """
    Local maxima (5x5) of the S/N ``data / error`` at or above ``min_snr`` (bad, non-finite
    or zero-error pixels: 0), found strip by strip: no whole-image temporaries. ``error``
    is an array or a map with ``block(start, stop)`` (rows, every column).
    """
    ny = data.shape[0]
    found_y, found_x, found_snr = [], [], []
    for start in range(0, ny, _STRIP_ROWS):
        stop = min(start + _STRIP_ROWS, ny)
        # Two rows either side: the 5x5 maximum filter sees what it would on the whole image.
        lo, hi = max(start - 2, 0), min(stop + 2, ny)
        block = (error.block(lo, hi) if hasattr(error, "block")
                 else error if np.ndim(error) == 0 else error[lo:hi])
        strip = data[lo:hi]
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = np.where(np.isfinite(strip) & (block > 0), strip / block, 0.0)
        if bad is not None:
            snr = np.where(bad[lo:hi], 0.0, snr)
        peaks = (snr >= min_snr) & (snr == ndimage.maximum_filter(snr, size=5, mode="constant"))
        peaks[:start - lo] = False
        peaks[stop - lo:] = False
        py, px = np.nonzero(peaks)
        found_y.append(py + lo)
        found_x.append(px)
        found_snr.append(snr[py, px])
    return np.concatenate(found_y), np.concatenate(found_x), np.concatenate(found_snr)


def select_psf_stars(data, error, bad=None, *, saturation=None, max_stars=80, min_snr=30.0):
    """
    Bright, unsaturated, isolated point sources of an image, chosen on the image.

    Local maxima of S/N above ``min_snr`` (in the peak pixel) are kept when no
    brighter pixel, masked pixel or frame edge lies near them, their core is
    not flat (saturated) and not above ``saturation``, not sharper than a
    point source (cosmic rays, hot pixels), and their concentration lies on
    the point-source locus: the densest narrow range, which galaxies (less
    concentrated, scattered) do not form.

    Returns
    -------
    x, y : arrays
        Peak positions of the chosen stars (brightest first).
    info : dict
        ``hfr`` (median half-flux radius of the chosen stars, px), ``n_candidates``,
    ``n_locus``.
    """
    ny, nx = data.shape
    py, px, peak_snr = _snr_peaks(data, error, bad, min_snr)
    order = np.argsort(-peak_snr)[:3000]
    py, px = py[order], px[order]
    info = {"n_candidates": int(px.size), "n_locus": 0, "hfr": np.nan}
    if px.size == 0:
        return px.astype(float), py.astype(float), info
    h = 12
    ok = (px >= h) & (px < nx - h) & (py >= h) & (py < ny - h)
    px, py = px[ok], py[ok]
    if px.size == 0:  # every candidate too near the frame's edge
        return np.zeros(0), np.zeros(0), info
    rows = py[:, None] + np.arange(-h, h + 1)
    cols = px[:, None] + np.arange(-h, h + 1)
    stamps = data[rows[:, :, None], cols[:, None, :]].astype(np.float64)
    if bad is not None:
        near_bad = bad[rows[:, :, None], cols[:, None, :]][:, h - 6:h + 7, h - 6:h + 7].any(
            axis=(1, 2))
    else:
        near_bad = np.zeros(px.size, bool)
    peak = stamps[:, h, h]
    # Isolation: nothing above 5 % of the peak beyond the core (another source, or a
    # galaxy's extended light), within the box.
    g = np.arange(-h, h + 1)
    r = np.hypot(g[:, None], g[None, :])
    hfr = _half_flux_radius(stamps, h)
    outer = stamps * (r[None] > np.clip(3 * hfr, 4, 10)[:, None, None])
    isolated = outer.max(axis=(1, 2)) < 0.05 * peak
    # Saturated cores are flat: the 4 neighbours of the peak almost as high as it.
    neighbours = np.stack([stamps[:, h - 1, h], stamps[:, h + 1, h], stamps[:, h, h - 1],
                           stamps[:, h, h + 1]], axis=1)
    flat = neighbours.min(axis=1) > 0.97 * peak
    # Sharper than a point source: hot pixels and cosmic rays (the peak holds over 70 % of
    # the central 3x3 sum; a pixel-integrated PSF of FWHM 1 px holds at most ~64 %).
    sharp = peak > 0.7 * stamps[:, h - 1:h + 2, h - 1:h + 2].sum(axis=(1, 2))
    good = isolated & ~flat & ~sharp & ~near_bad & np.isfinite(hfr)
    if saturation is not None:
        good &= peak < 0.9 * saturation
    cand = np.flatnonzero(good)
    if cand.size == 0:
        return np.zeros(0), np.zeros(0), info
    # The point-source locus in concentration (light in the central 3x3 over the 7x7):
    # the same for every star whatever its sub-pixel phase, lower for galaxies, higher
    # for cosmic rays; measured in few pixels, so little affected by noise. The locus is
    # the narrowest window (10 %) holding the most candidates.
    conc = (stamps[:, h - 1:h + 2, h - 1:h + 2].sum(axis=(1, 2))
            / stamps[:, h - 3:h + 4, h - 3:h + 4].sum(axis=(1, 2)))
    cand = cand[(conc[cand] > 0) & (conc[cand] <= 1)]
    if cand.size == 0:
        return np.zeros(0), np.zeros(0), info
    logs = np.sort(np.log(conc[cand]))
    width = np.log(1.10)
    counts = np.searchsorted(logs, logs + width, side="right") - np.arange(logs.size)
    start = int(np.argmax(counts))
    centre = float(np.median(logs[start:start + counts[start]]))
    on_locus = cand[np.abs(np.log(conc[cand]) - centre) <= width / 2 * 1.5]
    locus = float(np.median(hfr[on_locus])) if on_locus.size else np.nan
    info.update(hfr=locus, n_locus=int(on_locus.size))
    chosen = on_locus[:max_stars]  # already brightest first
    return px[chosen].astype(float), py[chosen].astype(float), info


def build_epsf(data, error, bad=None, *, saturation=None, max_stars=80, min_stars=10,
               maxiters=6, quiet=False):
    """
    The image's ePSF, built with photutils' `~photutils.psf.EPSFBuilder` from stars
    chosen on the image (`select_psf_stars`).

    The oversampling is 2 (`OVERSAMPLING`): on undersampled images (half-flux
    radius below 1.2 px) 4 leaves sub-pixels without data and distorts the
    core, and on well-sampled ones, with the at most 80 stars used, 4 measured
    worse and 13x slower (see the code). The ePSF's
    footprint is 2 ceil(4 FWHM) + 1 px (15 to 33); it is recentred on its
    first moment (the convention of the network's positions), and its
    normalisation includes the light the stars show beyond the footprint
    (`_footprint_fraction`, when measured to 1 %), so fitted fluxes are
    total fluxes.

    Parameters
    ----------
    data : 2-D array
        Background-subtracted image.
    error : 2-D array
        1-sigma error per pixel.
    bad : 2-D bool array, optional
        Pixels to ignore.

    quiet : bool
        MLPhotometry's default mode: build only from ``min_stars`` stars, without a
        warning (an image without enough stars is measured without a PSF).

    Returns
    -------
    epsf : `~photutils.psf.ImagePSF` or None
        None when fewer than 3 stars qualify (``min_stars`` when ``quiet``).
    info : dict
        Stars used (``psf_stars_x``, ``psf_stars_y``), their number, the locus
        half-flux radius, the oversampling, the footprint and the build time.
    """
    from photutils.psf import EPSFBuilder, ImagePSF

    t0 = time.perf_counter()
    x, y, sel = select_psf_stars(data, error, bad, saturation=saturation, max_stars=max_stars)
    info = {"psf_model": "auto", "psf_nstars": int(x.size), "psf_hfr": sel["hfr"],
            "psf_candidates": sel["n_candidates"]}
    if x.size < min_stars and not quiet:
        msg = (f'psf_model="auto" found {x.size} isolated, unsaturated point sources '
               f"(wants {min_stars}); " + ("the ePSF may be noisy" if x.size >= 3 else
                                           "no PSF is used"))
        warnings.warn(msg, TooFewPSFStarsWarning, stacklevel=user_stacklevel())
    if x.size < (min_stars if quiet else 3):
        info["psf_time_s"] = time.perf_counter() - t0
        return None, info
    # 2: on undersampled images 4 leaves sub-pixels without data and distorts the core; on
    # well-sampled ones, with the at most 80 stars used, 4 was both worse and slower
    # (stars injected into the NTT frame, S/N > 300: flux MARE 0.0087 against 0.0032,
    # 18 s against 1.4 s), its sub-pixels too thinly filled.
    oversampling = OVERSAMPLING
    fwhm = _FWHM_PER_HFR * sel["hfr"]
    size = int(np.clip(2 * np.ceil(4 * fwhm) + 1, 15, 33))
    stars = _epsf_stars(data, bad, x, y, size)
    if stars is None:
        info["psf_time_s"] = time.perf_counter() - t0
        return None, info
    builder = EPSFBuilder(oversampling=oversampling, maxiters=maxiters, progress_bar=False,
                          smoothing_kernel="quartic",
                          recentering_boxsize=(5, 5) if fwhm < 4 else (7, 7))
    with warnings.catch_warnings(), _fast_fill_of_empty_subpixels():
        warnings.simplefilter("ignore")
        epsf = builder(stars).epsf
    epsf = _recentred(epsf, fwhm)
    inside, inside_err, n_used = _footprint_fraction(data, bad, x, y, size)
    if np.isfinite(inside) and inside_err < _MAX_FRACTION_ERROR and 0.8 < inside <= 1.0:
        # The stars hold light beyond the footprint: the model's total includes it.
        epsf = ImagePSF(epsf.data * inside, oversampling=epsf.oversampling, origin=epsf.origin)
        info["psf_footprint_fraction"] = inside
    else:
        info["psf_footprint_fraction"] = 1.0
    info.update(psf_footprint_fraction_measured=inside, psf_footprint_fraction_err=inside_err,
                psf_footprint_fraction_nstars=n_used)
    info.update(psf_oversampling=oversampling, psf_footprint=size,
                psf_stars_x=x.tolist(), psf_stars_y=y.tolist(),
                psf_time_s=round(time.perf_counter() - t0, 3))
    return epsf, info


@contextlib.contextmanager
def _fast_fill_of_empty_subpixels():
    """
    EPSFBuilder with empty ePSF sub-pixels filled by a normalised convolution.

    Sub-pixels that no star covers at the right phase (the grid's rim always;
    inside too with few stars) are filled each iteration, by default with a
    2-D cubic (Clough-Tocher) interpolation over the whole grid: 90 % of the
    build time (8 s of 9 for a 33 px footprint). A Gaussian-weighted mean of
    the valid neighbours costs milliseconds and, unlike the nearest value
    (tried: it shifted the ePSF's centre by 0.15 px), keeps the core
    symmetric. Private photutils API: left alone if absent.
    """
    from photutils.psf import epsf_builder

    original = getattr(epsf_builder, "_interpolate_missing_data", None)
    if original is None:
        yield
        return

    def smooth_fill(data, mask, method="cubic"):
        data = np.array(data, dtype=float)
        if not mask.any() or mask.all():
            return original(data, mask, method=method)
        valid = (~mask).astype(float)
        values = np.where(mask, 0.0, data)
        out = data.copy()
        # Normalised convolution: each empty sub-pixel gets the Gaussian-weighted mean of
        # its valid neighbours (widening until every hole is reached; the nearest value
        # fills what stays out of reach).
        for sigma in (1.0, 2.0, 4.0):
            num = ndimage.gaussian_filter(values, sigma, mode="constant")
            den = ndimage.gaussian_filter(valid, sigma, mode="constant")
            ok = mask & (den > 1e-3)
            out[ok] = num[ok] / den[ok]
            mask = mask & ~ok
            if not mask.any():
                return out
        index = ndimage.distance_transform_edt(mask, return_distances=False,
                                               return_indices=True)
        return out[tuple(index)]

    epsf_builder._interpolate_missing_data = smooth_fill
    try:
        yield
    finally:
        epsf_builder._interpolate_missing_data = original


def _epsf_stars(data, bad, x, y, size):
    """
    `~photutils.psf.EPSFStars` of ``size`` px cutouts, each minus its own sky.

    The sky is the clipped median of the cutout's 2 px rim: what the mesh
    background leaves (nebulosity, a galaxy's halo, gradients) would
    otherwise become ePSF wings. Each cutout is a copy, so overlapping
    cutouts of close stars do not share a correction; masked pixels get
    zero weight. None with fewer than 3 cutouts inside the image.
    """
    from photutils.psf import EPSFStar, EPSFStars

    half = size // 2
    ny, nx = data.shape
    stars = []
    for xc, yc in zip(x, y):
        ix, iy = int(np.floor(xc + 0.5)), int(np.floor(yc + 0.5))
        if ix - half < 0 or iy - half < 0 or ix + half >= nx or iy + half >= ny:
            continue
        cut = np.array(data[iy - half:iy + half + 1, ix - half:ix + half + 1], dtype=np.float64)
        weights = np.ones_like(cut)
        if bad is not None:
            weights[bad[iy - half:iy + half + 1, ix - half:ix + half + 1]] = 0.0
        cut[weights == 0] = 0.0
        rim = np.concatenate([cut[:2].ravel(), cut[-2:].ravel(), cut[2:-2, :2].ravel(),
                              cut[2:-2, -2:].ravel()])
        cut -= _clipped_median(rim)
        stars.append(EPSFStar(cut, weights=weights,
                              cutout_center=(xc - (ix - half), yc - (iy - half)),
                              origin=(ix - half, iy - half)))
    return EPSFStars(stars) if len(stars) >= 3 else None


def _clipped_median(values, sigma=3.0, iters=5):
    values = values[np.isfinite(values)]
    for _ in range(iters):
        med = np.median(values)
        mad = 1.4826 * np.median(np.abs(values - med))
        keep = np.abs(values - med) <= sigma * max(mad, 1e-30)
        if keep.all() or keep.sum() < 5:
            break
        values = values[keep]
    return float(np.median(values)) if values.size else 0.0


#: The footprint fraction is applied only when measured this well (standard error).
_MAX_FRACTION_ERROR = 0.01


def _footprint_fraction(data, bad, x, y, size):
    """
    Fraction of the PSF stars' light inside the ePSF's square footprint.

    Each star's footprint sum against a circular aperture of 2.5 times the
    footprint's half-size (a local sky annulus subtracted from both), for the
    stars free of other sources' light out to the annulus (image-based, as the
    aperture correction decides). Robust mean over stars, its standard error,
    and the number of stars used.
    """
    from asidfe_phot import _aperture_correction as ap

    half = size // 2
    radius = min(2.5 * half, 40.0)
    ny, nx = data.shape
    reach = radius + ap.SKY_GAP + ap.SKY_WIDTH + 2
    ok = (x >= reach) & (y >= reach) & (x < nx - reach) & (y < ny - reach)
    x, y = x[ok], y[ok]
    if x.size < 5:
        return np.nan, np.inf, int(x.size)
    sky, sky_std = ap._local_sky(data, bad, x, y, radius + ap.SKY_GAP,
                                 radius + ap.SKY_GAP + ap.SKY_WIDTH)
    clean = ~ap._contaminated(data, bad, x, y, 1.2 * half, radius + ap.SKY_GAP + ap.SKY_WIDTH,
                              sky_std)
    x, y, sky = x[clean], y[clean], sky[clean]
    if x.size < 5:
        return np.nan, np.inf, int(x.size)
    total = ap._growth(data, bad, x, y, [radius])[:, 0] - sky * np.pi * radius**2
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    box = np.array([data[b - half:b + half + 1, a - half:a + half + 1].sum(dtype=np.float64)
                    for a, b in zip(ix, iy)]) - sky * size**2
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = box / total
    frac = frac[np.isfinite(frac)]
    if frac.size < 5:
        return np.nan, np.inf, int(frac.size)
    med = np.median(frac)
    mad = 1.4826 * np.median(np.abs(frac - med))
    keep = frac[np.abs(frac - med) <= 3 * max(mad, 1e-3)]
    return float(np.mean(keep)), float(np.std(keep) / np.sqrt(keep.size)), int(keep.size)


def _recentred(epsf, fwhm):
    """The ePSF shifted so that its first moment (within 3 FWHM) is its centre.

    EPSFBuilder centres by its recentring function on a small box; an
    asymmetric core then leaves the first moment off by ~0.1 px, and
    positions follow the model's centre. The first moment is the convention
    of the network's training truth and of most catalogues.
    """
    from photutils.psf import ImagePSF

    data = np.asarray(epsf.data, dtype=np.float64)
    o = int(np.atleast_1d(epsf.oversampling)[0])
    oy, ox = (np.asarray(epsf.origin, dtype=float)[::-1] if epsf.origin is not None
              else (np.array(data.shape, float) - 1) / 2)
    yy, xx = np.indices(data.shape, dtype=float)
    r = np.hypot(xx - ox, yy - oy) / o
    w = np.clip(data, 0, None) * (r <= max(3 * fwhm, 3.0))
    for _ in range(3):
        cx = (w * xx).sum() / w.sum() - ox
        cy = (w * yy).sum() / w.sum() - oy
        if np.hypot(cx, cy) < 1e-3 * o:
            break
        data = ndimage.shift(data, (-cy, -cx), order=3, mode="constant", cval=0.0)
        w = np.clip(data, 0, None) * (r <= max(3 * fwhm, 3.0))
    # Noise and the spline shift leave negative lobes around sharp (undersampled) cores; a
    # PSF has none there, and a fit weights them heavily where the sky is quiet.
    data = np.where((r <= max(fwhm, 1.5)) & (data < 0), 0.0, data)
    # The wings of an ePSF from a few dozen stars are mostly noise: beyond 2 FWHM they are
    # replaced by their azimuthal average (blended in up to 2.5 FWHM), which keeps their
    # light and removes the noise; the core keeps its shape (asymmetry, ellipticity).
    yy, xx = np.indices(data.shape, dtype=float)
    r = np.hypot(xx - ox, yy - oy) / o
    ring = np.floor(r * 2).astype(int)   # half-pixel annuli
    profile = (np.bincount(ring.ravel(), data.ravel())
               / np.maximum(np.bincount(ring.ravel()), 1))
    blend = np.clip((r - 2 * fwhm) / (0.5 * fwhm), 0, 1)
    data = (1 - blend) * data + blend * profile[ring]
    data = data * (o * o) / data.sum()
    return ImagePSF(data, oversampling=o, origin=(ox, oy))
