"""
The rounds of `asidfe_phot.artificial_stars.artificial_star_test` (private): inject,
detect, measure, match.
"""

import math
import time
import warnings

import numpy as np
from astropy.table import QTable, vstack

from asidfe_phot import _psf_mode
from asidfe_phot import artificial_stars as _as
from asidfe_phot import psf as _psf
from asidfe_phot._detection import finder_positions, make_finder
from asidfe_phot._prepare import prepare
from asidfe_phot._validation import (
    coerce_data,
    parse_positions,
    saturation_value,
)

__all__ = []  # private module

#: Nominal S/N threshold of the default finder, in units of the image's clipped rms.
DEFAULT_THRESHOLD = 5.0


def _check_count(value, name):
    if isinstance(value, bool) or int(value) != value or value < 1:
        msg = f"{name} must be a positive integer, got {value!r}"
        raise ValueError(msg)
    return int(value)


def _detections(finder, subtracted, bad):
    """Positions found by ``finder`` on the background-subtracted image (data units)."""
    x, y, _ = finder_positions(finder, subtracted, bad)
    return x, y


def match(x_true, y_true, x, y, radius):
    """
    One-to-one matches of truths to detections: nearest pairs first, within ``radius``.

    Returns the detection index of each truth (-1: none) and the distance (NaN: none).
    """
    from scipy.spatial import cKDTree

    index = np.full(x_true.size, -1)
    dist = np.full(x_true.size, np.nan)
    ok = np.isfinite(x) & np.isfinite(y)
    if not x_true.size or not ok.any():
        return index, dist
    candidates = np.flatnonzero(ok)
    pairs = cKDTree(np.column_stack([x_true, y_true])).sparse_distance_matrix(
        cKDTree(np.column_stack([x[ok], y[ok]])), radius, output_type="ndarray")
    taken = np.zeros(candidates.size, bool)
    for i, j, d in sorted(zip(pairs["i"], pairs["j"], pairs["v"]), key=lambda p: p[2]):
        if index[i] < 0 and not taken[j]:
            index[i], dist[i] = candidates[j], d
            taken[j] = True
    return index, dist


class _Frame:
    """The original image in data units, its noise, gain, PSF and sources."""

    def __init__(self, data, mask, error, gain, saturation, wcs, phot, psf_model):
        coerced = coerce_data(data, mask, error, wcs)
        self.unit, self.mask, self.wcs = coerced.unit, coerced.mask, coerced.wcs
        scale, exponent = coerced.scale, coerced.exponent
        self.image = np.ldexp(coerced.image, exponent)
        self.error = None if coerced.error is None else np.ldexp(coerced.error, exponent)
        self.box = phot.background_box_size
        prepared, info = prepare(coerced, None, gain, saturation, self.box)
        self.subtracted = np.ldexp(prepared.subtracted, exponent)
        self.bad = prepared.bad
        noise = prepared.error if prepared.error is not None else prepared.rms
        self.noise = np.ldexp(np.asarray(noise, dtype=np.float32), exponent)
        # Electrons per data unit (prepare's is per internal unit).
        self.gain = None if prepared.gain is None else float(prepared.gain) / scale
        self.gain_note = info.get("gain")
        self.saturation = None if saturation is None else saturation_value(saturation,
                                                                           self.unit)
        self.meta = {}
        if psf_model is None:
            msg = ("psf_model=None: the stars need a PSF to be rendered with; give "
                   '"auto" or a PSF model')
            raise ValueError(msg)
        psf_model = _psf.resolve_psf_model(psf_model)
        sampler, psf_info = _psf_mode.psf_sampler(psf_model, prepared)
        if sampler is None:
            msg = (f'psf_model="auto" found {psf_info.get("psf_nstars", 0)} isolated, '
                   "unsaturated point sources, too few for an ePSF to render the stars "
                   "with; give psf_model (a photutils PSF model or a PSFEx file)")
            raise ValueError(msg)
        self.sampler = sampler
        self.meta.update({k: v for k, v in psf_info.items()
                          if k in ("psf_model", "psf_nstars", "psf_fwhm", "psf_footprint")})

    def data(self, image):
        return image if self.unit is None else image * self.unit

    def subtracted_of(self, image, saturation):
        """Background-subtracted ``image`` and bad pixels, as MLPhotometry prepares it."""
        error = None if self.error is None else self.data(self.error)
        coerced = coerce_data(self.data(image), self.mask, error, None)
        prepared, _ = prepare(coerced, None, None, saturation, self.box)
        return np.ldexp(prepared.subtracted, coerced.exponent), prepared.bad


def _default_phot(psf_model):
    from asidfe_phot import MLPhotometry

    if isinstance(psf_model, str) and psf_model == "auto":
        return MLPhotometry()
    return MLPhotometry(psf_model=psf_model)


def run(data, *, n_stars, psf_model, phot, finder, catalog, mask, error, gain, saturation,
        wcs, seed, rounds, snr_range, progress):
    """`asidfe_phot.artificial_stars.artificial_star_test` (see there)."""
    from asidfe_phot import MLPhotometry

    start = time.perf_counter()
    n_stars = _check_count(n_stars, "n_stars")
    if rounds is not None:
        rounds = _check_count(rounds, "rounds")
    lo, hi = (float(v) for v in snr_range)
    if not 0 < lo <= hi < np.inf:
        msg = f"snr_range must be (low, high) with 0 < low <= high, got {snr_range!r}"
        raise ValueError(msg)
    if phot is None:
        phot = _default_phot(psf_model)
    elif not isinstance(phot, MLPhotometry):
        msg = f"phot must be an asidfe_phot.MLPhotometry, got {type(phot).__name__}"
        raise TypeError(msg)
    frame = _Frame(data, mask, error, gain, saturation, wcs, phot, psf_model)
    fwhm = frame.sampler.fwhm
    min_sep = _as.MIN_SEPARATION_FWHM * fwhm
    radius = max(_as.MATCH_RADIUS_FWHM * fwhm, 1.5)
    finder = finder if finder is not None else phot.finder
    threshold = None
    if finder is None:
        finder, threshold = make_finder(frame.image, fwhm, DEFAULT_THRESHOLD)
    if catalog is not None:
        cat_x, cat_y, _ = parse_positions(catalog, frame.wcs)
        sources = "catalogue"
    else:
        cat_x, cat_y = _detections(finder, frame.subtracted, frame.bad)
        sources = "finder"
    n_sources = int(np.count_nonzero(np.isfinite(cat_x) & np.isfinite(cat_y)))
    per_round = (math.ceil(n_stars / rounds) if rounds is not None
                 else max(math.ceil(_as.ROUND_FRACTION * n_sources), _as.MIN_PER_ROUND))
    rng = np.random.default_rng(seed)
    tables, blocked, caught_all = [], [], {}
    k, placed_total = 0, 0
    # A crowded frame may take fewer stars per round than planned: more rounds, within
    # reason.
    max_rounds = 10 * math.ceil(n_stars / per_round)
    while placed_total < n_stars and k < max_rounds:
        want = min(per_round, n_stars - placed_total)
        x, y, place = _as.place_stars(frame.image.shape, want, min_separation=min_sep,
                                      spacing=_as.SPACING_FWHM * fwhm,
                                      avoid=(cat_x, cat_y), bad=frame.bad, rng=rng)
        if not x.size:
            break       # no room left: report the stars placed so far
        blocked.append(place["blocked_fraction"])
        target = np.exp(rng.uniform(np.log(lo), np.log(hi), x.size))
        flux = _as.flux_for_snr(frame.sampler, x, y, target, frame.noise, gain=frame.gain)
        t0 = time.perf_counter()
        tbl, caught = _round(frame, finder, phot, x, y, flux, rng, cat_x, cat_y, catalog,
                             gain, saturation, radius)
        for name, message in caught.items():
            count, _ = caught_all.get(name, (0, None))
            caught_all[name] = (count + 1, message)
        tbl["round"] = k
        tables.append(tbl)
        placed_total += x.size
        if progress is not None:
            progress(f"round {k + 1}: {x.size} stars, {int(tbl['found'].sum())} found, "
                     f"{time.perf_counter() - t0:.1f} s")
        k += 1
    stars = vstack(tables, metadata_conflicts="silent") if tables else None
    if stars is None:
        msg = "no star could be placed: the frame has no free area away from its sources"
        raise ValueError(msg)
    stars["id"] = np.arange(1, len(stars) + 1)
    stars = stars[["id", "round", *[c for c in stars.colnames if c not in ("id", "round")]]]
    stars.meta = {
        "n_stars_requested": n_stars, "n_stars": len(stars), "rounds": k,
        "stars_per_round": per_round, "seed": seed, "snr_range": [lo, hi],
        "sources": f"{n_sources} from the {sources}",
        "finder": repr(finder) if threshold is None else
        f"DAOStarFinder(fwhm={fwhm:.3g}, threshold={threshold:.6g})",
        "min_separation_px": min_sep, "spacing_px": _as.SPACING_FWHM * fwhm,
        "match_radius_px": radius, "edge_px": _as.EDGE,
        "blocked_fraction": float(np.mean(blocked)),
        "gain": frame.gain, "gain_source": frame.gain_note if gain is None else "given",
        "noise": (f"Poisson, gain {frame.gain:.6g} electrons per data unit"
                  if frame.gain is not None else
                  "none: no gain known (no gain=, no sky level); the stars are noise-free"),
        **frame.meta,
        "model": f"{phot.model_card['name']}_v{phot.model_card['version']}",
        "warnings": [f"{name} (in {count} of {k} rounds; last: {message})"
                     for name, (count, message) in caught_all.items()],
        "time_s": round(time.perf_counter() - start, 3),
    }
    bins = _as.bin_statistics(stars)
    bins.meta.update({key: stars.meta[key] for key in ("n_stars", "rounds", "seed", "sources",
                                                        "psf_fwhm", "noise", "time_s")
                      if key in stars.meta})
    return stars, bins


def _round(frame, finder, phot, x, y, flux, rng, cat_x, cat_y, catalog, gain, saturation,
           radius):
    """One round: the per-star rows and the warnings of the measurement."""
    image, _ = _as.inject_stars(frame.image, frame.sampler, x, y, flux, gain=frame.gain,
                                rng=rng, saturation=frame.saturation)
    error = frame.error
    if error is not None and frame.gain is not None:
        # The error map gains the stars' photon noise (as calc_total_error would).
        error = np.sqrt(np.square(error) + np.clip(image - frame.image, 0, None) / frame.gain)
    subtracted, bad = frame.subtracted_of(image, frame.saturation)
    det_x, det_y = _detections(finder, subtracted, bad)
    if catalog is not None:
        # The user's sources, and the finder's detections of the injected stars.
        index, _ = match(x, y, det_x, det_y, radius)
        new = index[index >= 0]
        init_x = np.concatenate([cat_x, det_x[new]])
        init_y = np.concatenate([cat_y, det_y[new]])
        first = cat_x.size
    else:
        init_x, init_y, first = det_x, det_y, 0
    init = QTable({"x": init_x, "y": init_y})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = phot(frame.data(image), mask=frame.mask,
                      error=None if error is None else frame.data(error),
                      init_params=init, gain=gain, saturation=saturation)
    rows = result[first:]
    index, dist = match(x, y, np.asarray(rows["x_init"], dtype=float),
                        np.asarray(rows["y_init"], dtype=float), radius)
    found = index >= 0
    snr_true = _as.optimal_snr(frame.sampler, x, y, flux, frame.noise, gain=frame.gain)
    out = QTable()
    out["x_true"], out["y_true"] = x, y
    out["flux_true"] = flux if frame.unit is None else flux * frame.unit
    with np.errstate(divide="ignore", invalid="ignore"):
        out["mag_true"] = -2.5 * np.log10(flux)
    out["snr_true"] = snr_true
    out["found"] = found
    out["match_distance"] = dist
    take = np.where(found, index, 0)
    for name in ("x_init", "y_init", "x_fit", "y_fit", "flux_fit", "x_err", "y_err",
                 "flux_err"):
        column = rows[name] if len(rows) else np.zeros(0)
        values = np.asarray(getattr(column, "value", column), dtype=float)
        values = np.where(found, values[take] if values.size else np.nan, np.nan)
        unit = getattr(column, "unit", None)
        out[name] = values if unit is None or not name.startswith("flux") else values * unit
    # MLPhotometry(diagnostics=True): the core S/N (for calibrations) and the network's
    # own estimates before a PSF fit (which of the two the PSF mode chose, and why).
    for name in ("snr_core", *(c for c in rows.colnames
                               if c.endswith("_network") or c.endswith("_psf"))):
        if name not in rows.colnames:
            continue
        values = np.asarray(getattr(rows[name], "value", rows[name]), dtype=float)
        out[name] = np.where(found, values[take] if values.size else np.nan, np.nan)
    flags = np.asarray(rows["flags"]) if len(rows) else np.zeros(0, np.int64)
    out["flags"] = np.where(found, flags[take] if flags.size else 0, 0).astype(flags.dtype)
    flux_fit = np.asarray(getattr(out["flux_fit"], "value", out["flux_fit"]))
    flux_err = np.asarray(getattr(out["flux_err"], "value", out["flux_err"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        out["snr"] = flux_fit / flux_err
        out["mag"] = np.where(flux_fit > 0, -2.5 * np.log10(flux_fit), np.nan)
    messages = {w.category.__name__: str(w.message) for w in caught}
    return out, messages
