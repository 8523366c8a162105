"""
Artificial-star tests: how complete is a catalogue, and are its errors right?

Stars of known flux and position, rendered with the image's own PSF and given
their Poisson noise, are added to the user's frame (DAOPHOT's ``ADDSTAR``,
StarbugII's ``starbug2 -A``), detected and measured as the user's run does,
and compared with the truth, per S/N bin: completeness, flux bias and
scatter, position scatter, and the z-score std of the reported sigmas.

The building blocks are public for other uses of injected stars (e.g.
fine-tuning on a user's frame): `inject_stars` (render and add),
`place_stars` (where), `flux_for_snr` and `optimal_snr` (how bright).
`artificial_star_test` runs the whole test; `bin_statistics` summarises a
per-star table; `asidfe_phot.visualization.plot_artificial_stars` plots the
summary. The command line: ``asidfe-phot ast IMAGE --n-stars N``.

Pixel convention (photutils'): 0-based, integer coordinates are pixel centres.
"""

import numpy as np
from astropy.table import QTable

from asidfe_phot import _stamps
from asidfe_phot import flags as _flags
from asidfe_phot import psf as _psf
from asidfe_phot._psf_fit import model_image, paint_half_size
from asidfe_phot._validation import gain_value, saturation_value, split_mask, value_in_unit

__all__ = ["SNR_BINS", "SNR_RANGE", "inject_stars", "place_stars", "optimal_snr",
           "flux_for_snr", "artificial_star_test", "bin_statistics"]

#: Edges of the S/N bins of the summaries (the last one open); ``evaluation`` uses them too.
SNR_BINS = (3, 5, 10, 20, 50, 100, 300, 1000, np.inf)
#: Range of the injected stars' optimal S/N (drawn log-uniform).
SNR_RANGE = (3.0, 3000.0)
#: Stars per round, as a fraction of the frame's detected (or catalogued) sources: few
#: enough not to change the frame's crowding (DAOPHOT users add ~10 %).
ROUND_FRACTION = 0.1
#: Fewest stars per round (frames with few sources would otherwise need many rounds).
MIN_PER_ROUND = 10
#: Injected stars keep this many FWHM from the frame's sources' centres.
MIN_SEPARATION_FWHM = 2.0
#: ... and this many from each other: beyond a PSF fit's box (1.5 FWHM), the painted
#: neighbours (4 FWHM) and DAOStarFinder's default minimum separation (2.5 FWHM), so
#: that the injected stars do not crowd each other.
SPACING_FWHM = 5.0
#: A detection within this many FWHM (at least 1.5 px) of an injected star finds it.
MATCH_RADIUS_FWHM = 1.0
#: Injected stars keep this far (px) from the edges: the network's whole stamp is inside.
EDGE = _stamps.STAMP_SIZE // 2
#: Flags that exclude a found star from the error statistics: all but NO_SOURCE_NOISE.
BAD_FLAGS = sum(bit for bit, _, _ in _flags.FLAG_DEFINITIONS) & ~_flags.NO_SOURCE_NOISE
#: Robust standard deviation from the median absolute deviation (Gaussian).
MAD_TO_STD = 1.4826


def as_psf_sampler(psf):
    """A `~asidfe_phot.psf.PSFSampler` of ``psf`` (a sampler, a model or a PSFEx path)."""
    if isinstance(psf, _psf.PSFSampler):
        return psf
    if psf is None or isinstance(psf, str) and psf == "auto":
        msg = ("psf must be a photutils PSF model, a PSFEx file or a PSFSampler; for the "
               'image\'s own ePSF use asidfe_phot.psf.build_epsf (or psf_model="auto" of '
               "artificial_star_test)")
        raise ValueError(msg)
    return _psf.PSFSampler(_psf.resolve_psf_model(psf))


def _split_unit(data):
    """The image's values (float array) and unit (or None)."""
    values, _ = split_mask(data)
    unit = getattr(values, "unit", None)
    values = np.asarray(getattr(values, "value", values))
    if values.ndim != 2 or values.dtype.kind not in "iuf":
        msg = f"data must be a 2-D array of real numbers, got shape {values.shape}"
        raise ValueError(msg)
    return values, unit


def _positions(x, y, extra=None, name="flux"):
    """``x, y`` (and ``extra``) as finite 1-D float arrays of one length."""
    arrays = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (x, y)]
    if extra is not None:
        arrays.append(np.atleast_1d(np.asarray(extra, dtype=np.float64)))
    try:
        arrays = np.broadcast_arrays(*arrays)
    except ValueError as exc:
        msg = f"x, y and {name} must have one length (or broadcast), got {exc}"
        raise ValueError(msg) from exc
    if arrays[0].ndim != 1:
        msg = f"x, y and {name} must be 1-D"
        raise ValueError(msg)
    for label, values in zip(("x", "y", name), arrays):
        if not np.all(np.isfinite(values)):
            msg = f"{label} must be finite"
            raise ValueError(msg)
    return [np.array(a) for a in arrays]


def inject_stars(data, psf, x, y, flux, *, gain=None, rng=None, saturation=None):
    """
    Add stars rendered with a PSF model, each with its own Poisson noise.

    Each star is the unit-flux PSF (photutils' normalisation) times ``flux``,
    centred on ``(x, y)`` and rendered on the pixels within
    ``asidfe_phot.psf.RADIUS`` (16) px of its centre in x and y (negative model
    values, an ePSF's noise or the interpolation's ringing, are set to 0);
    its pixels get Poisson noise from ``gain`` (electrons per data unit).
    The image's own noise is already there.

    Parameters
    ----------
    data : 2-D array or `~astropy.units.Quantity`
        The image (its sky subtracted or not); not modified.
    psf : photutils PSF model, path-like or `~asidfe_phot.psf.PSFSampler`
        The image's PSF: any photutils PSF model (e.g. the ePSF of
        `asidfe_phot.psf.build_epsf`), a PSFEx ``.psf`` file, or a sampler.
    x, y : array-like
        Centres of the stars (0-based pixels).
    flux : array-like or `~astropy.units.Quantity`
        Total fluxes, as the PSF model defines its total, in data units.
    gain : float or `~astropy.units.Quantity`, optional
        Electrons per data unit, for the stars' Poisson noise. `None`: the
        stars are added without noise (``truth.meta["noise"]`` says so).
    rng : `numpy.random.Generator` or int, optional
        Random generator (or seed) of the noise.
    saturation : float or `~astropy.units.Quantity`, optional
        Pixels the stars push above this level are clipped to it, as the
        detector would (data units, as ``data``).

    Returns
    -------
    image : `~numpy.ndarray` or `~astropy.units.Quantity`
        ``data`` plus the stars (float32 for float32 data, else float64).
    truth : `~astropy.table.QTable`
        ``id, x, y, flux`` (the injected total and centre) and
        ``flux_rendered``, the light added within the rendering radius and the
        image before noise (the PSF's enclosed fraction times ``flux``);
        ``meta``: ``psf_fwhm``, ``render_radius``, ``gain``, ``noise``.

    Examples
    --------
    >>> import numpy as np
    >>> from photutils.psf import CircularGaussianPRF
    >>> from asidfe_phot.artificial_stars import inject_stars
    >>> image, truth = inject_stars(np.zeros((64, 64)), CircularGaussianPRF(fwhm=3.0),
    ...                             [20.3, 40.0], [30.0, 41.6], [1000.0, 500.0])
    >>> round(float(image.sum()), 3)
    1500.0
    """
    sampler = as_psf_sampler(psf)
    values, unit = _split_unit(data)
    flux = value_in_unit(flux, unit, "flux")
    x, y, flux = _positions(x, y, getattr(flux, "value", flux))
    # No star has negative light: negative values of the model (an ePSF's own noise,
    # the interpolation's ringing), scaled by a bright star's flux, would make pixels
    # far below the sky, which MLPhotometry rejects as dead.
    model = np.clip(model_image(values.shape, sampler, x, y, flux, _psf.RADIUS), 0, None)
    added = model
    meta = {"psf_fwhm": sampler.fwhm, "render_radius": _psf.RADIUS}
    if gain is not None:
        gain = gain_value(gain, unit)
        generator = np.random.default_rng(rng)
        flat = model.ravel()
        lit = np.flatnonzero(flat)
        noisy = flat.copy()
        noisy[lit] = generator.poisson(flat[lit] * gain) / gain
        added = noisy.reshape(model.shape)
        meta.update(gain=gain, noise=f"Poisson, gain {gain:.6g} electrons per data unit")
    else:
        meta.update(gain=None, noise="none: no gain given, the stars are noise-free")
    dtype = np.float32 if values.dtype == np.float32 else np.float64
    image = (values + added).astype(dtype, copy=False)
    if saturation is not None:
        level = saturation_value(saturation, unit)
        pushed = (image > level) & (values <= level)
        image[pushed] = level
        meta["saturation"] = level
        meta["n_pixels_clipped"] = int(np.count_nonzero(pushed))
    truth = QTable()
    truth["id"] = np.arange(1, x.size + 1)
    truth["x"] = x
    truth["y"] = y
    truth["flux"] = flux if unit is None else flux * unit
    rendered = _enclosed_fraction(sampler, x, y, values.shape) * flux
    truth["flux_rendered"] = rendered if unit is None else rendered * unit
    truth.meta.update(meta)
    return (image if unit is None else image * unit), truth


def _enclosed_fraction(sampler, x, y, shape, chunk=2048):
    """Fraction of each unit-flux star rendered within the radius and inside the image."""
    ny, nx = shape
    half = _psf.RADIUS
    size = 2 * half + 1
    out = np.empty(x.size)
    for start in range(0, x.size, chunk):
        sl = slice(start, start + chunk)
        x0 = _stamps.reference_pixel(x[sl]) - half
        y0 = _stamps.reference_pixel(y[sl]) - half
        boxes = sampler.render(x[sl], y[sl], x0, y0, size)
        cols = (x0[:, None] + np.arange(size))[:, None, :]
        rows = (y0[:, None] + np.arange(size))[:, :, None]
        inside = (cols >= 0) & (cols < nx) & (rows >= 0) & (rows < ny)
        out[sl] = (np.clip(boxes, 0, None) * inside).sum(axis=(1, 2))
    return out


def place_stars(shape, n, *, min_separation, spacing=None, avoid=None, bad=None, edge=EDGE,
                rng=None):
    """
    Random positions for ``n`` stars, apart from each other and from known sources.

    Positions are uniform within ``edge`` px of the frame's edges; a candidate
    within ``min_separation`` px of a source in ``avoid``, within ``spacing``
    px of an already placed star, or on a ``bad`` pixel is drawn again.

    Parameters
    ----------
    shape : tuple of int
        The image's shape ``(ny, nx)``.
    n : int
        Stars wanted.
    min_separation : float
        Smallest distance (px) to a source of ``avoid``.
    spacing : float, optional
        Smallest distance (px) between placed stars (default ``min_separation``).
    avoid : tuple of arrays, optional
        ``(x, y)`` of the frame's sources (non-finite entries are ignored).
    bad : 2-D bool array, optional
        Pixels a star must not be centred on (masked, non-finite).
    edge : float, optional
        Smallest distance (px) to the frame's edges.
    rng : `numpy.random.Generator` or int, optional

    Returns
    -------
    x, y : arrays
        The positions (fewer than ``n`` when the frame has no more room).
    info : dict
        ``n_placed`` and ``blocked_fraction``: the fraction of the allowed area
        within ``min_separation`` of ``avoid`` or on ``bad`` pixels (a Monte
        Carlo estimate): injected stars never land there, so the completeness
        measured leaves out stars hidden under the frame's own sources.
    """
    from scipy.spatial import cKDTree

    ny, nx = shape
    if not min_separation >= 0:
        msg = f"min_separation must be a non-negative number of pixels, got {min_separation}"
        raise ValueError(msg)
    if nx - 1 - 2 * edge < 0 or ny - 1 - 2 * edge < 0:
        msg = (f"the image ({nx}x{ny} px) has no room for stars {edge} px from its edges; "
               "give a larger image or a smaller edge")
        raise ValueError(msg)
    spacing = min_separation if spacing is None else spacing
    if not spacing >= 0:
        msg = f"spacing must be a non-negative number of pixels, got {spacing}"
        raise ValueError(msg)
    generator = np.random.default_rng(rng)
    tree = None
    if avoid is not None:
        ax, ay = (np.asarray(v, dtype=float).ravel() for v in avoid)
        ok = np.isfinite(ax) & np.isfinite(ay)
        if ok.any():
            tree = cKDTree(np.column_stack([ax[ok], ay[ok]]))
    placed = np.empty((0, 2))
    drawn = blocked = 0
    max_draws = 200 * int(n) + 10_000
    while len(placed) < n and drawn < max_draws:
        batch = max(4 * (int(n) - len(placed)), 256)
        cand = np.column_stack([generator.uniform(edge, nx - 1 - edge, batch),
                                generator.uniform(edge, ny - 1 - edge, batch)])
        drawn += batch
        free = np.ones(batch, bool)
        if tree is not None:
            free &= tree.query(cand, distance_upper_bound=min_separation)[0] > min_separation
        if bad is not None:
            iy, ix = (_stamps.reference_pixel(cand[:, k]) for k in (1, 0))
            free &= ~np.asarray(bad, dtype=bool)[iy, ix]
        blocked += int(np.count_nonzero(~free))
        for xy in cand[free]:
            if len(placed) == n:
                break
            if not len(placed) or np.min(np.hypot(*(placed - xy).T)) >= spacing:
                placed = np.vstack([placed, xy])
    info = {"n_placed": len(placed), "blocked_fraction": blocked / drawn if drawn else 0.0}
    return placed[:, 0], placed[:, 1], info


def _snr_boxes(sampler, x, y, noise):
    """Unit-flux PSF boxes (4 FWHM) around each star and their pixel variances (inf: bad)."""
    half = paint_half_size(sampler.fwhm)
    size = 2 * half + 1
    x0 = _stamps.reference_pixel(x) - half
    y0 = _stamps.reference_pixel(y) - half
    psf = sampler.render(x, y, x0, y0, size)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.ndim == 0:
        boxes = np.broadcast_to(noise, psf.shape)
    else:
        boxes = _stamps.cutout_stamps(noise, x, y, size, fill=np.inf)[0].astype(np.float64)
    var = np.where(np.isfinite(boxes) & (boxes > 0), np.square(boxes), np.inf)
    return psf, var


def _snr(flux, psf, var, gain):
    f = np.asarray(flux, dtype=np.float64)[:, None, None]
    source = f * np.clip(psf, 0, None) / gain if gain is not None else 0.0
    return np.sqrt((np.square(f * psf) / (var + source)).sum(axis=(1, 2)))


def optimal_snr(psf, x, y, flux, noise, *, gain=None):
    """
    S/N of stars measured optimally with their PSF (a PSF fit at known position).

    ``S/N = sqrt(sum((F p)**2 / (sigma**2 + F p / gain)))`` over the pixels
    within 4 FWHM of each star, ``p`` the unit-flux PSF, ``sigma`` the
    background noise and ``F p / gain`` the star's own Poisson variance.

    Parameters
    ----------
    psf : photutils PSF model, path-like or `~asidfe_phot.psf.PSFSampler`
    x, y, flux : array-like
        Centres (px) and total fluxes (data units).
    noise : float or 2-D array
        Background 1-sigma noise per pixel (data units); non-finite or
        non-positive pixels are left out.
    gain : float, optional
        Electrons per data unit; `None` leaves out the stars' own noise.

    Returns
    -------
    `~numpy.ndarray`
    """
    sampler = as_psf_sampler(psf)
    x, y, flux = _positions(x, y, flux)
    gain = None if gain is None else gain_value(gain, None)
    return _snr(flux, *_snr_boxes(sampler, x, y, noise), gain)


def flux_for_snr(psf, x, y, snr, noise, *, gain=None):
    """
    Total fluxes that give stars at ``(x, y)`` the optimal S/N ``snr``.

    The inverse of `optimal_snr` (the same parameters, ``snr`` for
    ``flux``): exact without ``gain``, by bisection in log flux with it.
    NaN where no pixel near the star has a usable noise value.
    """
    sampler = as_psf_sampler(psf)
    x, y, snr = _positions(x, y, snr, "snr")
    gain = None if gain is None else gain_value(gain, None)
    psf_boxes, var = _snr_boxes(sampler, x, y, noise)
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = snr / np.sqrt((np.square(psf_boxes) / var).sum(axis=(1, 2)))
    if gain is None:
        return np.where(np.isfinite(flux), flux, np.nan)
    ok = np.isfinite(flux) & (flux > 0)
    lo = np.log(np.where(ok, flux, 1.0))     # the star's own noise only lowers its S/N
    hi = lo.copy()
    for _ in range(40):
        short = ok & (_snr(np.exp(hi), psf_boxes, var, gain) < snr)
        if not short.any():
            break
        hi[short] += np.log(10.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        low = _snr(np.exp(mid), psf_boxes, var, gain) < snr
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return np.where(ok, np.exp(0.5 * (lo + hi)), np.nan)


def artificial_star_test(data, *, n_stars, psf_model="auto", phot=None, finder=None,
                         catalog=None, mask=None, error=None, gain=None, saturation=None,
                         wcs=None, seed=0, rounds=None, snr_range=SNR_RANGE,
                         progress=None):
    """
    Inject stars into an image, detect and measure them as the user's run does.

    Per round, stars rendered with the image's PSF (`inject_stars`) are
    added to the original image, at places ``MIN_SEPARATION_FWHM`` FWHM
    from the frame's sources and ``SPACING_FWHM`` from each other
    (`place_stars`), with
    fluxes that make their optimal S/N log-uniform in ``snr_range``
    (`flux_for_snr`, with the image's background noise and gain). The image
    is then background-subtracted and searched by ``finder`` as
    `~asidfe_phot.MLPhotometry` does, every detection (or the catalogue's
    sources plus the detections of injected stars) is measured by ``phot``,
    so neighbours are treated as in the user's run, and each injected star is
    matched to the nearest unclaimed detection within ``MATCH_RADIUS_FWHM``
    FWHM (at least 1.5 px). Rounds hold ``ROUND_FRACTION`` of the frame's
    sources (at least ``MIN_PER_ROUND``) so that the stars do not change the
    frame's crowding.

    Parameters
    ----------
    data : 2-D array, `~astropy.units.Quantity`, MaskedArray or `~astropy.nddata.NDData`
        The image, as given to `~asidfe_phot.MLPhotometry`.
    n_stars : int
        Stars to inject, all rounds together.
    psf_model : "auto", photutils PSF model or path-like, optional
        The PSF the stars are rendered with: ``"auto"`` (default) the ePSF
        of the image's own stars (`asidfe_phot.psf.build_epsf`, as
        ``MLPhotometry(psf_model="auto")`` builds it), a photutils model or a
        PSFEx file. Also the measurement's PSF when ``phot`` is not given.
    phot : `~asidfe_phot.MLPhotometry`, optional
        The measurement, configured as in the user's run. Default:
        ``MLPhotometry()`` (with ``psf_model`` when that is a model).
    finder : callable, optional
        A photutils finder. Default: ``phot.finder``, else DAOStarFinder of the
        PSF's FWHM at 5 x the image's clipped rms (as ``asidfe-phot --find``).
    catalog : `~astropy.table.Table`, optional
        The frame's sources, as the user's ``init_params`` (photutils column
        aliases): measured with the injected stars the finder found, and
        kept clear of injected stars. Default: the finder's detections on the
        original image.
    mask, error, gain, saturation, wcs : optional
        As for `~asidfe_phot.MLPhotometry.__call__`. ``gain`` (else the
        effective gain ``sky / rms**2`` MLPhotometry derives) gives the stars
        their Poisson noise; ``error`` is widened by it per round. Without
        either no noise is added to the stars (``meta["noise"]``).
    seed : int, optional
        Seed of the positions, fluxes and noise: equal seeds, equal results.
    rounds : int, optional
        Number of rounds (``n_stars`` split evenly), instead of the default.
    snr_range : tuple of float, optional
        Range of the injected stars' optimal S/N.
    progress : callable, optional
        Called with one line of text after each round (e.g. `print`).

    Returns
    -------
    stars : `~astropy.table.QTable`
        One row per injected star: ``id, round, x_true, y_true, flux_true,
        mag_true`` (``-2.5 log10 flux_true``), ``snr_true`` (optimal S/N),
        ``found``, ``match_distance`` (px), and of its detection's
        measurement ``x_init, y_init, x_fit, y_fit, flux_fit, x_err,
        y_err, flux_err, flags, snr`` (``flux_fit / flux_err``) and ``mag``
        (NaN where not found). ``meta``: the settings, the PSF, gain and noise
        used, the frame's source count, the rounds, the area left out
        (``blocked_fraction``), warnings of the measurements and the time.
    bins : `~astropy.table.QTable`
        `bin_statistics` of ``stars``.

    Raises
    ------
    ValueError
        No PSF (``"auto"`` found too few stars), bad ``n_stars`` or
        ``rounds``, or an image too small for stars ``EDGE`` px from its edges.
    """
    from asidfe_phot import _ast

    return _ast.run(data, n_stars=n_stars, psf_model=psf_model, phot=phot, finder=finder,
                    catalog=catalog, mask=mask, error=error, gain=gain,
                    saturation=saturation, wcs=wcs, seed=seed, rounds=rounds,
                    snr_range=snr_range, progress=progress)


def _label(lo, hi):
    return f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">{lo:g}"


def _robust_std(values):
    values = values[np.isfinite(values)]
    if values.size < 2:
        return np.nan
    return float(MAD_TO_STD * np.median(np.abs(values - np.median(values))))


def _plain_std(values):
    values = values[np.isfinite(values)]
    return float(np.std(values)) if values.size >= 2 else np.nan


def _values(column):
    return np.asarray(getattr(column, "value", column), dtype=np.float64)


def bin_statistics(stars, *, bins=SNR_BINS, bad_flags=BAD_FLAGS):
    """
    Per S/N bin: completeness, flux bias and scatter, position scatter, z-score std.

    Parameters
    ----------
    stars : `~astropy.table.Table`
        The per-star table of `artificial_star_test` (or any with its
        columns ``snr_true, found, x_true, y_true, flux_true, mag_true,
        x_fit, y_fit, flux_fit, x_err, y_err, flux_err, flags``).
    bins : sequence of float, optional
        Edges of the bins of ``snr_true`` (``lo <= snr_true < hi``).
    bad_flags : int, optional
        Found stars with any of these flags are left out of the error
        statistics and counted in ``flagged_fraction``.

    Returns
    -------
    `~astropy.table.QTable`
        One row per bin holding stars: ``snr_bin`` (label), ``snr_lo,
        snr_hi, snr_median, mag_bright, mag_faint`` (of ``mag_true``),
        ``n_injected, n_found, completeness`` (found / injected),
        ``completeness_err`` (binomial), ``flagged_fraction`` (of the found),
        ``n_good`` (found, unflagged, finite flux and errors), and over the
        good ones: ``flux_bias`` (median of ``flux_fit / flux_true - 1``),
        ``flux_scatter`` (its 1.4826 MAD), ``position_scatter`` (1.4826 MAD
        of ``x_fit - x_true`` and ``y_fit - y_true`` together, px), and for
        ``z = (value - truth) / err`` of flux, x and y: ``zstd_flux, zstd_x,
        zstd_y`` (the plain standard deviation; 1 for calibrated errors) and
        ``zstd_flux_robust, zstd_x_robust, zstd_y_robust`` (1.4826 MAD: the
        core of the distribution, insensitive to a few outliers).
    """
    snr = _values(stars["snr_true"])
    found = np.asarray(stars["found"], dtype=bool)
    flags = np.asarray(stars["flags"]).astype(np.int64)
    flux, flux_true = _values(stars["flux_fit"]), _values(stars["flux_true"])
    flux_err = _values(stars["flux_err"])
    mag_true = _values(stars["mag_true"])
    dx = _values(stars["x_fit"]) - _values(stars["x_true"])
    dy = _values(stars["y_fit"]) - _values(stars["y_true"])
    x_err, y_err = _values(stars["x_err"]), _values(stars["y_err"])
    flagged = found & ((flags & int(bad_flags)) != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = flux / flux_true - 1
        z = {"flux": (flux - flux_true) / flux_err, "x": dx / x_err, "y": dy / y_err}
    good = (found & ~flagged & np.isfinite(ratio) & np.isfinite(dx) & np.isfinite(dy)
            & (flux_err > 0) & (x_err > 0) & (y_err > 0))
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (snr >= lo) & (snr < hi)
        n = int(np.count_nonzero(sel))
        if not n:
            continue
        n_found = int(np.count_nonzero(found[sel]))
        c = n_found / n
        g = sel & good
        row = {"snr_bin": _label(lo, hi), "snr_lo": float(lo), "snr_hi": float(hi),
               "snr_median": float(np.median(snr[sel])),
               "mag_bright": float(np.nanmin(mag_true[sel])),
               "mag_faint": float(np.nanmax(mag_true[sel])),
               "n_injected": n, "n_found": n_found, "completeness": c,
               "completeness_err": float(np.sqrt(c * (1 - c) / n)),
               "flagged_fraction": (float(np.count_nonzero(flagged[sel])) / n_found
                                    if n_found else np.nan),
               "n_good": int(np.count_nonzero(g)),
               "flux_bias": float(np.median(ratio[g])) if g.any() else np.nan,
               "flux_scatter": _robust_std(ratio[g]),
               "position_scatter": _robust_std(np.concatenate([dx[g] - np.median(dx[g]),
                                                               dy[g] - np.median(dy[g])])
                                               if g.any() else np.zeros(0))}
        for key, values in z.items():
            row[f"zstd_{key}"] = _plain_std(values[g])
        for key, values in z.items():
            row[f"zstd_{key}_robust"] = _robust_std(values[g])
        rows.append(row)
    names = ["snr_bin", "snr_lo", "snr_hi", "snr_median", "mag_bright", "mag_faint",
             "n_injected", "n_found", "completeness", "completeness_err", "flagged_fraction",
             "n_good", "flux_bias", "flux_scatter", "position_scatter", "zstd_flux", "zstd_x",
             "zstd_y", "zstd_flux_robust", "zstd_x_robust", "zstd_y_robust"]
    table = QTable(rows=[[r[k] for k in names] for r in rows], names=names) if rows else \
        QTable(names=names, dtype=[str] + [float] * 5 + [int, int, float, float, float, int]
               + [float] * 9)
    table.meta["statistics"] = (
        "completeness: found / injected per bin of the true optimal S/N; the rest over "
        "found stars without bad flags and with finite values: flux_bias median of "
        "flux_fit / flux_true - 1, flux_scatter and position_scatter 1.4826 MAD, zstd_* the "
        "plain standard deviation of (value - truth) / err, zstd_*_robust its 1.4826 MAD")
    table.meta["bad_flags"] = int(bad_flags)
    return table
