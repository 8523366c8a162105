"""
Star-field simulator with exact truths (numpy only).

One simulator serves tests, docs, training and evaluation. Stars are
pixel-integrated, normalised, truncated PSFs (radius 5 FWHM, like PSFEx
models) scaled by their exact total flux, placed at random sub-pixel
positions on a sky with smooth gradients, with Poisson noise on sky and
sources plus read noise, in electrons or in ADU through a gain.

Truth positions follow photutils' pixel convention (0-based, integer = pixel
centre) and are the PSF's first moment (its flux-weighted centroid), which
stays well defined for asymmetric PSFs.
"""

import numpy as np
from astropy.table import QTable

__all__ = ["PSF_FAMILIES", "render_psf_stamps", "make_star_field", "make_test_image",
           "fisher_bounds"]

#: PSF families the simulator renders ("airy": a diffraction-limited, optionally obstructed
#: pupil, as in space data).
PSF_FAMILIES = ("gaussian", "moffat", "double_gaussian", "airy")
_FAMILY_CODE = {name: i for i, name in enumerate(PSF_FAMILIES)}
#: PSF truncation radius, in FWHM (as PSFEx products).
TRUNCATION_FWHM = 5.0
_GAUSS_SIGMA_PER_FWHM = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: FWHM of an unobstructed Airy pattern in units of lambda / D.
_AIRY_FWHM = 1.029


def _taper(r):
    """1 inside 0.8, a raised-cosine fall to 0 at 1 (``r`` in units of the radius)."""
    t = np.clip((1.0 - r) / 0.2, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def _airy_amplitude(x):
    """``2 J1(x) / x`` (1 at x = 0)."""
    from scipy.special import j1

    small = x < 1e-6
    return np.where(small, 1.0, 2.0 * j1(np.where(small, 1.0, x)) / np.where(small, 1.0, x))


def _profile_one(code, r2, p):
    """Radial profile (unnormalised) of one family on the squared elliptical radius."""
    sig2 = (p["fwhm"] * _GAUSS_SIGMA_PER_FWHM) ** 2
    if code == _FAMILY_CODE["gaussian"]:
        return np.exp(-0.5 * r2 / sig2)
    if code == _FAMILY_CODE["moffat"]:
        beta = p["beta"]
        alpha2 = p["fwhm"] ** 2 / (4.0 * (2.0 ** (1.0 / beta) - 1.0))
        return (1.0 + r2 / alpha2) ** (-beta)
    if code == _FAMILY_CODE["airy"]:
        x = np.pi * _AIRY_FWHM * np.sqrt(r2) / p["fwhm"]
        e = p["obstruction"]
        amplitude = (_airy_amplitude(x) - e**2 * _airy_amplitude(e * x)) / (1.0 - e**2)
        return amplitude**2
    h, k2 = p["halo_fraction"], p["halo_scale"] ** 2
    return (1 - h) * np.exp(-0.5 * r2 / sig2) + (h / k2) * np.exp(-0.5 * r2 / (k2 * sig2))


def _profile(r2, p):
    """Radial profile for per-star families (fast path when all stars share one)."""
    codes = np.unique(p["family"])
    if codes.size == 1:
        return _profile_one(int(codes[0]), r2, p)
    out = np.zeros(r2.shape, dtype=r2.dtype)
    for code in codes:
        out = np.where(p["family"] == code, _profile_one(int(code), r2, p), out)
    return out


def _default_param(params, key, n, value):
    return np.broadcast_to(np.asarray(params.get(key, value), dtype=np.float64), (n,))


def _normalise_params(params, n):
    """Broadcast PSF parameters to per-star (n, 1, 1) arrays."""
    family = params.get("family", "moffat")
    if isinstance(family, str):
        family = np.full(n, _FAMILY_CODE[family])
    out = {"family": np.broadcast_to(np.asarray(family), (n,))}
    for key, value in (("fwhm", 3.0), ("beta", 3.0), ("truncation", TRUNCATION_FWHM),
                       ("centred_truncation", False),
                       ("ellipticity", 0.0), ("angle", 0.0),
                       ("halo_fraction", 0.2), ("halo_scale", 2.5), ("obstruction", 0.0),
                       ("asym_fraction", 0.0), ("asym_distance", 0.0), ("asym_angle", 0.0)):
        out[key] = _default_param(params, key, n, value)
    out = {k: v[:, None, None] for k, v in out.items()}
    out["cos"], out["sin"] = np.cos(out["angle"]), np.sin(out["angle"])
    return out


def _shape_r2(dx, dy, p):
    """Squared elliptical radius (area-preserving axis ratio 1 - ellipticity)."""
    c, s = p["cos"], p["sin"]
    u = c * dx + s * dy
    v = -s * dx + c * dy
    q = 1.0 - p["ellipticity"]
    return u**2 / q + v**2 * q


def _oversampling(fwhm):
    """Sub-pixel samples per axis: enough to integrate undersampled PSFs over pixels."""
    return int(np.clip(np.ceil(4.0 / max(float(fwhm), 0.5)), 1, 5))


def render_psf_stamps(params, x, y, half_size=None, oversample=None):
    """
    Pixel-integrated, normalised, truncated PSF stamps for many stars.

    Parameters
    ----------
    params : dict
        PSF parameters, scalars or per-star arrays: ``family`` (name or code),
        ``fwhm`` (px), ``beta`` (Moffat), ``ellipticity`` (1 - axis ratio),
        ``angle`` (rad), ``halo_fraction`` and ``halo_scale`` (double
        Gaussian), ``obstruction`` (Airy: central obstruction, fraction of the
        pupil's radius; ``fwhm`` is that of the unobstructed pattern),
        ``asym_fraction``, ``asym_distance`` (px) and ``asym_angle`` (a shifted
        copy of the profile holding that fraction of the light),
        ``truncation`` (radius in FWHM, default 5), ``centred_truncation``
        (a smooth taper around the star's centre instead of a hard circle around
        its central pixel; always for Airy).
    x, y : 1-D arrays
        Star positions (pixel coordinates).
    half_size : int, optional
        Stamp half-size; default ``ceil(5 * max(fwhm))``.
    oversample : int, optional
        Sub-pixel samples per axis; default from the smallest FWHM.

    Returns
    -------
    stamps : (n, 2h+1, 2h+1) float64
        Each sums to 1 (truncated at 5 FWHM, then normalised).
    x0, y0 : (n,) int arrays
        Pixel of each stamp's centre.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    n = x.size
    p = _normalise_params(params, n)
    if half_size is None:
        half_size = int(np.ceil(np.max(p["truncation"] * p["fwhm"]))) if n else 1
    if oversample is None:
        oversample = _oversampling(float(np.min(p["fwhm"])) if n else 1.0)
    x0 = np.floor(x + 0.5).astype(np.int64)
    y0 = np.floor(y + 0.5).astype(np.int64)
    size = 2 * half_size + 1
    grid = np.arange(size, dtype=np.float64) - half_size
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    # Offsets of sub-pixel samples from the star's centre, per star.
    fx = (x - x0)[:, None, None]
    fy = (y - y0)[:, None, None]
    # The asymmetric component shifts the centroid; recentre so the first moment is (x, y).
    a = p["asym_fraction"]
    ax = p["asym_distance"] * np.cos(p["asym_angle"])
    ay = p["asym_distance"] * np.sin(p["asym_angle"])
    # Truncation: a hard circle around the central pixel (as the generic data sets were
    # made, bit for bit), or, for slowly falling wings (Airy; ``centred_truncation``), a
    # smooth taper around the star's centre: a hard circle off the centre moves their
    # first moment by ~0.015 px.
    radius = p["truncation"] * p["fwhm"]
    centred = (p["family"] == _FAMILY_CODE["airy"]) | (p["centred_truncation"] > 0)
    stamps = np.zeros((n, size, size))
    for sy in sub:
        dy = grid[None, :, None] + sy - fy
        for sx in sub:
            dx = grid[None, None, :] + sx - fx
            main = _profile(_shape_r2(dx + a * ax, dy + a * ay, p), p)
            if np.any(a > 0):
                comp = _profile(_shape_r2(dx - (1 - a) * ax, dy - (1 - a) * ay, p), p)
                main = (1 - a) * main + a * comp
            if np.any(centred):
                main = np.where(centred, main * _taper(np.hypot(dx, dy) / radius), main)
            stamps += main
    r2 = grid[None, :, None] ** 2 + grid[None, None, :] ** 2
    stamps *= centred | (r2 <= radius**2)
    stamps /= stamps.sum(axis=(1, 2), keepdims=True)
    return stamps, x0, y0


def _add_stamps(image, stamps, x0, y0, weights):
    """Add weighted stamps into image (clipping at the edges), vectorised with bincount."""
    ny, nx = image.shape
    n, size, _ = stamps.shape
    h = size // 2
    cols = (x0[:, None] - h + np.arange(size))[:, None, :]
    rows = (y0[:, None] - h + np.arange(size))[:, :, None]
    ok = (cols >= 0) & (cols < nx) & (rows >= 0) & (rows < ny)
    flat = (rows * nx + cols)[ok]
    vals = (stamps * weights[:, None, None])[ok]
    image += np.bincount(flat, weights=vals, minlength=ny * nx).reshape(ny, nx)


def render_sources(shape, x, y, flux, psf_params, chunk=512):
    """Noiseless image of point sources (flux in the image's units)."""
    image = np.zeros(shape, dtype=np.float64)
    n = len(x)
    params = {k: np.broadcast_to(np.asarray(v), (n,)) if not isinstance(v, str) else v
              for k, v in psf_params.items()}
    # Group by stamp half-size so faint compact stars do not pay for the widest PSF.
    radius = (np.broadcast_to(params.get("truncation", TRUNCATION_FWHM), (n,))
              * np.broadcast_to(params.get("fwhm", 3.0), (n,)))
    half = np.ceil(radius).astype(int)
    for h in np.unique(half):
        idx = np.flatnonzero(half == h)
        for start in range(0, idx.size, chunk):
            sel = idx[start:start + chunk]
            sub = {k: (v[sel] if not isinstance(v, str) else v) for k, v in params.items()}
            stamps, x0, y0 = render_psf_stamps(sub, x[sel], y[sel], half_size=int(h))
            _add_stamps(image, stamps, x0, y0, np.asarray(flux, dtype=np.float64)[sel])
    return image


def fisher_bounds(psf_params, x, y, flux_e, background_e, read_noise_e, step=0.01):
    """
    Cramér–Rao bounds and optimal S/N for isolated stars (electrons).

    The Fisher information of a PSF fit with the true PSF for parameters
    (flux, x, y, local background), with per-pixel variance
    ``background + read_noise**2 + flux * psf``, over the PSF's truncation disk.

    Returns
    -------
    dict of (n,) arrays
        ``snr`` (optimal PSF-weighted S/N, known position and background:
        ``flux * sqrt(sum(psf**2 / var))``) and ``crlb_flux``, ``crlb_x``,
        ``crlb_y`` (1-sigma bounds, flux in electrons, positions in px).
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    n = x.size
    if n == 0:
        return {k: np.zeros(0) for k in ("snr", "crlb_flux", "crlb_x", "crlb_y")}
    fwhm = np.broadcast_to(np.asarray(psf_params.get("fwhm", 3.0), dtype=np.float64), (n,))
    trunc = np.broadcast_to(np.asarray(psf_params.get("truncation", TRUNCATION_FWHM),
                                       dtype=np.float64), (n,))
    h = int(np.ceil((trunc * fwhm).max()))
    # Same integer stamp centre for all three renders: shift inputs by the step only.
    base, x0, y0 = render_psf_stamps(psf_params, x, y, half_size=h)
    px, _, _ = render_psf_stamps(psf_params, x + step, y, half_size=h)
    py, _, _ = render_psf_stamps(psf_params, x, y + step, half_size=h)
    # Keep the integer centre consistent if the step crosses a pixel boundary.
    shift_x = np.floor(x + step + 0.5).astype(np.int64) - x0
    shift_y = np.floor(y + step + 0.5).astype(np.int64) - y0
    if np.any(shift_x) or np.any(shift_y):
        for i in np.flatnonzero(shift_x):
            px[i] = np.roll(px[i], 1, axis=1)
        for i in np.flatnonzero(shift_y):
            py[i] = np.roll(py[i], 1, axis=0)
    f = np.asarray(flux_e, dtype=np.float64)[:, None, None]
    var = (np.asarray(background_e, dtype=np.float64)[..., None, None]
           + np.asarray(read_noise_e, dtype=np.float64)[..., None, None] ** 2 + f * base)
    grid = np.arange(2 * h + 1) - h
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2)[None]
            <= ((trunc * fwhm)[:, None, None]) ** 2)
    # Pixels outside the truncation disk carry no information (and have zero
    # variance when background and read noise are zero): give them zero weight.
    var = np.where(disk, var, np.inf)
    derivs = np.stack([base, f * (px - base) / step, f * (py - base) / step,
                       np.ones_like(base)], axis=1) * disk[:, None]
    w = derivs / var[:, None]
    fisher = np.einsum("nipq,njpq->nij", w, derivs)
    cov = np.linalg.inv(fisher)
    snr = flux_e * np.sqrt(np.sum(base**2 / var, axis=(1, 2)))
    return {"snr": snr, "crlb_flux": np.sqrt(cov[:, 0, 0]), "crlb_x": np.sqrt(cov[:, 1, 1]),
            "crlb_y": np.sqrt(cov[:, 2, 2])}


def make_star_field(shape=(256, 256), n_sources=100, *, psf=None, flux_range=(100, 1e5),
                    flux_slope=0.8, sky=100.0, sky_gradient=(0.0, 0.0), gain=1.0,
                    read_noise=5.0, border=0, positions=None, fluxes=None, noise=True,
                    seed=0):
    """
    A star field with exact truths.

    Parameters
    ----------
    shape : tuple of int
    n_sources : int
        Ignored when ``positions`` is given.
    psf : dict or `photutils.psf.ImagePSF`, optional
        Parameters for `render_psf_stamps` (default Moffat, FWHM 3 px,
        beta 3), each a scalar or a per-source array, or a photutils image
        PSF model (e.g. an ePSF built from a real image).
    flux_range : tuple
        Range of total fluxes, in electrons.
    flux_slope : float
        Power-law index: N(>F) is proportional to F**-flux_slope.
    sky : float
        Sky level (electrons per pixel) at the frame centre.
    sky_gradient : tuple of float
        Fractional change of the sky across the frame in x and y.
    gain : float
        Electrons per ADU; the image is returned in ADU (``gain=1`` is electrons).
    read_noise : float
        Read noise in electrons.
    border : int
        Keep sources at least this far from the frame edges.
    positions : tuple of arrays, optional
        ``(x, y)`` of the sources.
    fluxes : array, optional
        Source fluxes in electrons.
    noise : bool
        Add Poisson and read noise.
    seed : int

    Returns
    -------
    image : 2-D float32 array (ADU)
    truth : `~astropy.table.QTable`
        ``id, x, y, flux`` (flux in ADU), ``flux_e``.
    meta : dict
        ``sky_e`` map, ``gain``, ``read_noise``, ``background`` (ADU map),
        ``noise`` (per-pixel 1-sigma in ADU).
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    if positions is None:
        x = rng.uniform(border - 0.5, nx - border - 0.5, n_sources)
        y = rng.uniform(border - 0.5, ny - border - 0.5, n_sources)
    else:
        x, y = (np.asarray(v, dtype=np.float64) for v in positions)
        n_sources = x.size
    if fluxes is None:
        lo, hi = flux_range
        u = rng.uniform(0, 1, n_sources)
        # Truncated power law N(>F) ~ F**-slope between lo and hi.
        flux_e = lo * (1 - u * (1 - (hi / lo) ** -flux_slope)) ** (-1.0 / flux_slope)
    else:
        flux_e = np.asarray(fluxes, dtype=np.float64)
    psf = {} if psf is None else psf
    if isinstance(psf, dict):
        source_e = render_sources(shape, x, y, flux_e, psf)
    else:
        source_e = _render_image_psf(shape, x, y, flux_e, psf)
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky_e = sky * (1 + sky_gradient[0] * (xx / nx - 0.5) + sky_gradient[1] * (yy / ny - 0.5))
    expected = source_e + sky_e
    if noise:
        counts = rng.poisson(np.clip(expected, 0, None)).astype(np.float64)
        counts += rng.normal(0.0, read_noise, shape)
    else:
        counts = expected
    image = (counts / gain).astype(np.float32)
    truth = QTable()
    truth["id"] = np.arange(1, n_sources + 1)
    truth["x"] = x
    truth["y"] = y
    truth["flux"] = flux_e / gain
    truth["flux_e"] = flux_e
    meta = {"sky_e": sky_e, "gain": gain, "read_noise": read_noise,
            "background": (sky_e / gain).astype(np.float32),
            "noise": (np.sqrt(np.clip(expected, 0, None) + read_noise**2) / gain).astype(
                np.float32)}
    return image, truth, meta


def _render_image_psf(shape, x, y, flux, psf_model):
    """Render with a photutils image PSF model (e.g. an ePSF), one star at a time."""
    image = np.zeros(shape, dtype=np.float64)
    ny, nx = shape
    half = 25
    grid = np.arange(-half, half + 1)
    for xi, yi, fi in zip(x, y, flux):
        x0, y0 = int(np.floor(xi + 0.5)), int(np.floor(yi + 0.5))
        xx, yy = np.meshgrid(grid + x0, grid + y0)
        stamp = psf_model.evaluate(xx, yy, flux=fi, x_0=xi, y_0=yi)
        ok = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
        np.add.at(image, (yy[ok], xx[ok]), stamp[ok])
    return image


def make_test_image(shape=(128, 128), n_sources=20, fwhm=3.0, sky=200.0, seed=0):
    """
    A small Moffat star field for examples and tests (ADU, gain 2).

    Returns
    -------
    image : 2-D float32 array
    truth : `~astropy.table.QTable`
        ``id, x, y, flux``.
    """
    image, truth, _ = make_star_field(shape, n_sources, psf={"family": "moffat", "fwhm": fwhm,
                                                             "beta": 3.0},
                                      flux_range=(2e3, 2e5), sky=sky, gain=2.0,
                                      read_noise=5.0, border=8, seed=seed)
    truth.remove_column("flux_e")
    return image, truth


# --- Real demo data (embedded) -------------------------------------------------------------

__all__ += ["load_demo_image"]

_DEMO_IMAGE = "sep_image.fits"
_DEMO_CATALOGUE = "sep_image_sextractor.ecsv"


def load_demo_image():
    """
    The embedded real demo image and its SourceExtractor catalogue.

    A 256x256 cut-out of an ESO NTT + EMMI R-band frame (1992, ESO-Sculptor
    field, sum of 3 exposures, 1200 s, seeing ~0.9 arcsec), taken from
    SourceExtractor's test suite. The sky (~6850 ADU, rms ~63 ADU) has not
    been subtracted, so `~asidfe_phot.MLPhotometry` derives the effective gain
    from it. Most of the 65 catalogued objects are galaxies; a few are stars,
    some near the edges. There is no celestial WCS and no ``BUNIT``.

    Returns
    -------
    data : 2-D `~numpy.ndarray` of float32
        The image, ADU (native byte order).
    header : `~astropy.io.fits.Header`
        Its FITS header, without the four non-standard ``ESO-LOG`` cards that
        astropy would warn about.
    catalogue : `~astropy.table.QTable`
        The SourceExtractor catalogue (65 rows): ``id``, ``xcentroid``,
        ``ycentroid`` (0-based pixels, ready for ``init_params``), then the
        SourceExtractor columns ``NUMBER, X_IMAGE, Y_IMAGE, XWIN_IMAGE,
        YWIN_IMAGE`` (converted to 0-based pixels), ``X2_IMAGE, Y2_IMAGE,
        XY_IMAGE, ERRX2_IMAGE, ERRY2_IMAGE, ERRXY_IMAGE, A_IMAGE, FLUX_APER``
        (10 px diameter), ``FLUXERR_APER, KRON_RADIUS, FLUX_AUTO,
        FLUXERR_AUTO, FLUX_RADIUS, FLUX_RADIUS_1, FLUX_RADIUS_2, FLAGS``
        (SourceExtractor flags). ``meta`` records the provenance.

    Examples
    --------
    >>> from asidfe_phot.datasets import load_demo_image
    >>> data, header, cat = load_demo_image()
    >>> data.shape, data.dtype.name, len(cat)
    ((256, 256), 'float32', 65)
    """
    from importlib import resources

    from asidfe_phot._fitsio import quiet_header_warnings, read_image

    root = resources.files("asidfe_phot.data")
    with resources.as_file(root / _DEMO_IMAGE) as path:
        data, header, _ = read_image(path, hdu=0)
    with quiet_header_warnings():
        for index in reversed([i for i, card in enumerate(header.cards)
                               if card.image.startswith("ESO-LOG")]):
            del header[index]
    with resources.as_file(root / _DEMO_CATALOGUE) as path:
        catalogue = QTable.read(path, format="ascii.ecsv")
    return data, header, catalogue
