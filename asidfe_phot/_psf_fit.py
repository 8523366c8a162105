"""
PSF fitting at the network's positions, vectorised over sources (private).

With the image's PSF known, the best estimates of a bright star's flux and
centre are those of a weighted least-squares PSF fit; the network's estimates
start it (and handle what a fit handles badly: faint sources, neighbours).
Each source is fitted for (flux, x, y) in a small box around its reference
pixel, after subtracting the model of every other input source (their
current estimates), by a few Gauss-Newton steps; a second pass refits against
the refined neighbours, as DAOPHOT's ALLSTAR iterates. The inverse Fisher
matrix gives the 1-sigma errors.
"""

import numpy as np

from asidfe_phot import _stamps
from asidfe_phot._thresholds import BLEND_INFLATION

__all__ = []  # private module

_MAX_STEP = 0.5    # px per Gauss-Newton step
_MAX_SHIFT = 1.5   # px from the input position: beyond, the fit has wandered (kept at the start)
#: Smallest radius (px) of the core whose chi^2 tells unexplained light in the core.
_MIN_CORE_RADIUS = 1.5


def fit_half_size(fwhm):
    """Half-size of the fit box: ceil(1.5 FWHM), 2 to 8 px."""
    return int(np.clip(np.ceil(1.5 * fwhm), 2, 8))


def paint_half_size(fwhm):
    """Half-size of a source's model when painted into the image: 4 FWHM, 3 to 16 px."""
    return int(np.clip(np.ceil(4 * fwhm), 3, 16))


def model_image(shape, sampler, x, y, flux, half=None, pixels=None):
    """
    Image of sources ``x, y, flux`` rendered with the PSF (pixels beyond ``half`` px: 0;
    ``half`` an int or a pair ``(hy, hx)``). With ``pixels`` (sorted flat indices into
    ``shape``): the image at those pixels only (1-D), never made whole.
    """
    half = paint_half_size(sampler.fwhm) if half is None else half
    return _paint(shape, x, y, flux, half,
                  lambda xs, ys, x0, y0, size: sampler.render(xs, ys, x0, y0, size), pixels)


def box_image(shape, x, y, level, half):
    """Image of a constant ``level`` per source over its box (``half`` as `model_image`)."""
    return _paint(shape, x, y, level, half,
                  lambda xs, ys, x0, y0, size: np.ones((np.size(xs), size, size)))


#: Sources fitted at a time (`fit_sources`).
_FIT_CHUNK = 2048
#: Sources rendered at a time when painting (bounds the temporaries: ~1,000 x 33^2 values).
_PAINT_CHUNK = 1024


def _paint(shape, x, y, flux, half, render, pixels=None):
    """
    Sum of ``render(...) * flux`` per source over its box of half-sizes ``half``: the
    whole image, or (``pixels``, sorted flat indices) the image at those pixels.
    """
    hy, hx = (half, half) if np.ndim(half) == 0 else half
    h = max(hy, hx)
    ny, nx = shape
    out = np.zeros(ny * nx if pixels is None else pixels.size, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    x, y, flux = np.asarray(x)[ok], np.asarray(y)[ok], np.asarray(flux)[ok]
    size = 2 * h + 1
    offsets = np.abs(np.arange(size) - h)
    in_shape = (offsets[:, None] <= hy) & (offsets[None, :] <= hx)
    for start in range(0, x.size, _PAINT_CHUNK):
        sl = slice(start, start + _PAINT_CHUNK)
        x0 = _stamps.reference_pixel(x[sl]) - h
        y0 = _stamps.reference_pixel(y[sl]) - h
        values = render(x[sl], y[sl], x0, y0, size) * flux[sl, None, None]
        cols = (x0[:, None] + np.arange(size))[:, None, :]
        rows = (y0[:, None] + np.arange(size))[:, :, None]
        inside = (cols >= 0) & (cols < nx) & (rows >= 0) & (rows < ny) & in_shape
        flat, values = (rows * nx + cols)[inside], values[inside]
        if pixels is not None:
            flat, hit = _positions(pixels, flat)
            values = values[hit]
        # Added in place: no whole-image temporary per chunk.
        np.add.at(out, flat, values)
    return out.reshape(shape) if pixels is None else out


def _positions(pixels, flat):
    """Where the flat indices ``flat`` sit in the sorted ``pixels``, for those there."""
    pos = np.clip(np.searchsorted(pixels, flat), 0, max(pixels.size - 1, 0))
    hit = (pixels[pos] == flat) if pixels.size else np.zeros(flat.shape, bool)
    return pos[hit], hit


def _boxes(image, x0, y0, size, fill):
    """``size`` boxes of ``image`` starting at (x0, y0) (outside: ``fill``) and inside mask."""
    centre_x = x0 + size // 2
    centre_y = y0 + size // 2
    return _stamps.cutout_stamps(image, centre_x, centre_y, size, fill=fill)


def _joint_fluxes(sampler, x, y, flux, solve, pix, weight, data_flat, shape, half,
                  prior=None, prior_err=None):
    """
    Fluxes of the sources ``solve`` at fixed positions, fitted jointly.

    Weighted linear least squares over the unique pixels ``pix`` (flat
    indices of the fit boxes; ``weight`` and ``data_flat`` alike), every other
    source held at its ``flux``: blended sources share their light instead
    of each taking all of it. Returns the fluxes and, per solved source, the
    factor by which its neighbours inflate its flux variance (1 when isolated).

    ``prior, prior_err`` (per source; NaN: none) add a Gaussian prior on the
    flux: used for sources the data alone cannot split from a neighbour.
    """
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    ny, nx = shape
    known = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    members = np.flatnonzero(known)
    size = 2 * half + 1
    rows, cols, vals = [], [], []
    for start in range(0, members.size, _PAINT_CHUNK):
        m = members[start:start + _PAINT_CHUNK]
        x0 = _stamps.reference_pixel(x[m]) - half
        y0 = _stamps.reference_pixel(y[m]) - half
        v = sampler.render(x[m], y[m], x0, y0, size)
        cc = (x0[:, None] + np.arange(size))[:, None, :]
        rr = (y0[:, None] + np.arange(size))[:, :, None]
        inside = (cc >= 0) & (cc < nx) & (rr >= 0) & (rr < ny) & (v != 0)
        pos, hit = _positions(pix, (rr * nx + cc)[inside])
        who = np.broadcast_to(m[:, None, None], v.shape)[inside]
        rows.append(pos)
        cols.append(who[hit])
        vals.append(v[inside][hit])
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    sw = np.sqrt(weight)
    design = sparse.csr_matrix((vals * sw[rows], (rows, cols)), shape=(pix.size, x.size))
    rhs_data = data_flat * sw
    fixed = known & ~solve
    if fixed.any():
        rhs_data = rhs_data - design[:, np.flatnonzero(fixed)] @ flux[fixed]
    unknown = np.flatnonzero(solve & known)
    a = design[:, unknown].tocsc()
    normal = (a.T @ a).tocsc()
    diag = normal.diagonal()
    ridge = 1e-12 * (diag.max() if diag.size else 1.0)
    normal = normal + sparse.diags(np.where(diag > 0, 0.0, 1.0) + ridge)
    out = flux.copy()
    inflation = np.ones(x.size)
    if unknown.size == 0:
        return out, inflation
    rhs = a.T @ rhs_data
    system = normal
    if prior is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            pw = np.where(np.isfinite(prior[unknown]) & (prior_err[unknown] > 0),
                          1.0 / np.square(prior_err[unknown]), 0.0)
        system = normal + sparse.diags(pw)
        rhs = rhs + pw * np.nan_to_num(prior[unknown])
    out[unknown] = spsolve(system.tocsc(), rhs) if unknown.size > 1 else (
        rhs / system.toarray()[0])
    # Variance inflation from the neighbours: the source's block of the inverse normal
    # matrix (itself and the sources it overlaps), against its isolated value.
    coo = normal.tocoo()
    d = normal.diagonal()
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.abs(coo.data) / np.sqrt(d[coo.row] * d[coo.col])
    strong = (coo.row != coo.col) & (corr > 0.02)
    csr = normal.tocsr()
    for i in np.unique(coo.row[strong]):
        block_ids = np.concatenate([[i], coo.col[strong & (coo.row == i)]])
        block = csr[block_ids][:, block_ids].toarray()
        try:
            inflation[unknown[i]] = np.linalg.inv(block)[0, 0] * d[i]
        except np.linalg.LinAlgError:
            inflation[unknown[i]] = np.inf
    return out, inflation


class FitOptions:
    """photutils' options of the fit (`fit_sources`); the defaults are MLPhotometry's own."""

    def __init__(self, fit_shape=None, free=(True, True, True), xy_bounds=None,
                 local_bkg=None):
        self.fit_shape = fit_shape      # (ny, nx) odd, or None: fit_half_size of the FWHM
        self.free = tuple(bool(f) for f in free)    # (flux, x, y) fitted, else held
        self.xy_bounds = xy_bounds      # (bx, by) px from the input position (None: free)
        self.local_bkg = local_bkg      # per source, subtracted from its box, or None


def fit_sources(data, error_boxes_fn, bad, x, y, flux, sampler, fit=None, passes=2, steps=3,
                x_input=None, y_input=None, flux_err=None, profile_error=0.0, options=None):
    """
    Fit (flux, x, y) of the sources ``fit`` (default all with finite estimates).

    Each pass solves the fluxes of all sources jointly at their current
    positions (`_joint_fluxes`), then moves each source by Gauss-Newton steps
    on its own (flux, x, y), the others held; the final fluxes are the joint
    solution at the final positions.

    Parameters
    ----------
    data : 2-D float array
        Background-subtracted image (bad pixels any value).
    error_boxes_fn : callable
        ``error_boxes_fn(x_centres, y_centres, size, data_boxes)`` -> 1-sigma
        error boxes (the caller's error map or noise model).
    bad : 2-D bool array or None
    x, y, flux : arrays
        Starting estimates of every input source (NaN: unknown, not modelled).
    sampler : `asidfe_phot.psf.PSFSampler`
    x_input, y_input : arrays, optional
        The input positions: a start further than 1 px from them (drawn to a
        neighbour) restarts there, and a fit that wanders beyond ``_MAX_SHIFT``
        of them is undone.
    flux_err : array, optional
        The starting fluxes' errors: the prior of blended sources' fluxes.
    profile_error : float
        Relative error of the PSF model, added to each pixel's variance as
        ``(profile_error * flux * psf)**2`` (DAOPHOT's profile error), at the
        starting estimates: an imperfect model then does not let the
        brightest pixels pull the fit.
    options : `FitOptions`, optional
        photutils' ``fit_shape`` (the box), the parameters held fixed (a held
        position stays at ``x_input, y_input``; a held flux at ``flux``; a
        held parameter's error is NaN, as photutils'), ``xy_bounds`` (how far
        the centre may move from ``x_input, y_input``) and a per-source local
        background.

    Returns
    -------
    dict of arrays (NaN where not fitted): ``x, y, flux, x_err, y_err,
    flux_err`` (the fit), ``flux_lin, flux_lin_err`` (the joint linear PSF
    flux at the starting positions), ``qfit, cfit`` (photutils'
    definitions), ``npix``, ``blend_inflation`` (flux variance factor from
    overlapping neighbours).
    """
    x = np.asarray(x, dtype=np.float64).copy()
    y = np.asarray(y, dtype=np.float64).copy()
    flux = np.asarray(flux, dtype=np.float64).copy()
    n = x.size
    known = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    fit = known if fit is None else (np.asarray(fit, bool) & known)
    out = {k: np.full(n, np.nan) for k in ("x", "y", "flux", "x_err", "y_err", "flux_err",
                                            "flux_lin", "flux_lin_err", "qfit", "cfit",
                                            "blend_inflation", "chi2", "chi2_core")}
    out["npix"] = np.zeros(n, dtype=np.int64)
    out["npix_core"] = np.zeros(n, dtype=np.int64)
    out["nfree"] = 0
    out["blended"] = np.zeros(n, bool)
    idx = np.flatnonzero(fit)
    if idx.size == 0:
        return out
    options = FitOptions() if options is None else options
    free = np.array(options.free)
    if options.fit_shape is None:
        h = hy = hx = fit_half_size(sampler.fwhm)
    else:
        hy, hx = options.fit_shape[0] // 2, options.fit_shape[1] // 2
        h = max(hy, hx)
    size = 2 * h + 1
    paint = paint_half_size(sampler.fwhm)
    ny, nx = data.shape
    if x_input is not None:
        x_input = np.asarray(x_input, dtype=np.float64)
        y_input = np.asarray(y_input, dtype=np.float64)
        drawn = np.hypot(x - x_input, y - y_input) > 1.0
        # The other start of a drawn source: an undersampled star's detection may itself
        # be a pixel off, and the fit cannot climb to the star from there (the first
        # pass descends from both and keeps the better).
        drawn &= fit
        other_x, other_y = x.copy(), y.copy()
        x[drawn], y[drawn] = x_input[drawn], y_input[drawn]
        if not (free[1] and free[2]):     # a held coordinate: the input's start only
            drawn[:] = False
        elif options.xy_bounds is not None:
            other_x, other_y = _within_bounds(other_x, other_y, x_input, y_input,
                                              options.xy_bounds)
        # A held coordinate is the input's (photutils' fixed x_0, y_0).
        if not free[1]:
            x[fit] = x_input[fit]
        if not free[2]:
            y[fit] = y_input[fit]
        if options.xy_bounds is not None:
            x[fit], y[fit] = _within_bounds(x[fit], y[fit], x_input[fit], y_input[fit],
                                            options.xy_bounds)
    start_x, start_y = x.copy(), y.copy()
    anchor_x = start_x if x_input is None else x_input
    anchor_y = start_y if y_input is None else y_input
    prior = flux.copy()
    prior_err = (np.full(n, np.nan) if flux_err is None
                 else np.asarray(flux_err, dtype=np.float64))
    ref_x = _stamps.reference_pixel(start_x[idx])
    ref_y = _stamps.reference_pixel(start_y[idx])
    x0, y0 = ref_x - h, ref_y - h
    dbox, inside = _boxes(data, x0, y0, size, 0.0)
    if options.local_bkg is not None:
        dbox = dbox - np.asarray(options.local_bkg, dtype=np.float64)[idx, None, None]
    if (hy, hx) != (h, h):      # a rectangular fit_shape: the box's pixels outside it unused
        grid = np.abs(np.arange(size) - h)
        inside = inside & (grid[None, :, None] <= hy) & (grid[None, None, :] <= hx)
    valid = inside
    if bad is not None:
        badbox, _ = _boxes(bad, x0, y0, size, True)
        valid = inside & ~badbox
    ebox = error_boxes_fn(ref_x, ref_y, size, dbox)
    variance = np.square(ebox, dtype=np.float64)
    if profile_error > 0:
        start_model = sampler.render(x[idx], y[idx], x0, y0, size) * np.abs(flux[idx])[:, None,
                                                                                       None]
        variance = variance + np.square(profile_error * start_model)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(valid & (variance > 0) & np.isfinite(variance), 1.0 / variance, 0.0)
    dbox = np.where(valid, dbox, 0.0)
    out["npix"][idx] = np.count_nonzero(weight, axis=(1, 2))
    del ebox, variance
    # The unique pixels of all fit boxes: the joint flux solution's (weighted) and those
    # where the model of every source is evaluated (never painted whole: `model_image`).
    grid_cols = (x0[:, None] + np.arange(size))[:, None, :]
    grid_rows = (y0[:, None] + np.arange(size))[:, :, None]
    flat = grid_rows * nx + grid_cols
    del grid_cols, grid_rows
    use = weight > 0
    pix, first = np.unique(flat[use], return_index=True)
    pix_weight = weight[use][first]
    pix_data = dbox[use][first]
    del use, first
    box_pix = np.unique(flat[valid])
    # Where each valid box pixel sits among box_pix (the model's values are gathered there).
    slot = np.where(valid, np.searchsorted(box_pix, np.where(valid, flat, 0)), 0).astype(
        np.int32 if box_pix.size < 2**31 else np.int64)
    del flat
    solve = np.zeros(n, bool)
    solve[idx] = free[0]    # a held flux stays at its start (photutils' fixed flux)
    cols = np.flatnonzero(free)
    moves = bool(free[1] or free[2])
    bounds = options.xy_bounds
    # Per-source work is done _FIT_CHUNK sources at a time: its temporaries (the
    # Jacobians, ~20 box-sized arrays per source) stay bounded as the sources grow.
    chunks = [slice(start, start + _FIT_CHUNK) for start in range(0, idx.size, _FIT_CHUNK)]

    blended = np.zeros(n, bool)

    def joint():
        # Sources the data cannot split from a neighbour keep the network's flux as a prior.
        held = np.where(blended, prior_err, np.nan)
        return _joint_fluxes(sampler, x, y, flux, solve, pix, pix_weight, pix_data,
                             data.shape, paint, prior, held)

    def model_boxes(c):
        """Every source's model (``everyone``, at box_pix) in the boxes of chunk ``c``."""
        return np.where(valid[c], everyone[slot[c]], 0.0)

    def descend(box, px, py, pf):
        """Gauss-Newton steps of sources alone in their boxes (`_box_chi2`'s ``box``)."""
        bx0, by0, w, target, ax, ay = box
        px, py, pf = px.copy(), py.copy(), pf.copy()
        for _ in range(steps if moves else 0):
            prof, gx, gy = sampler.render(px, py, bx0, by0, size, derivatives=True)
            jac = np.stack([prof, pf[:, None, None] * gx, pf[:, None, None] * gy],
                           axis=1)[:, cols]
            resid = target - pf[:, None, None] * prof
            jw = jac * w[:, None]
            normal = np.einsum("nipq,njpq->nij", jw, jac)
            grad = np.einsum("nipq,npq->ni", jw, resid)
            ok = np.isfinite(normal).all(axis=(1, 2)) & (np.abs(np.linalg.det(normal)) > 0)
            step = np.zeros((ok.size, 3))
            if ok.any():
                step[np.ix_(ok, cols)] = np.linalg.solve(normal[ok],
                                                         grad[ok][..., None])[..., 0]
            step[:, 1:] = np.clip(step[:, 1:], -_MAX_STEP, _MAX_STEP)
            pf, px, py = pf + step[:, 0], px + step[:, 1], py + step[:, 2]
            if bounds is not None:
                px, py = _within_bounds(px, py, ax, ay, bounds)
        return px, py, pf

    for p in range(passes):
        flux, inflation = joint()
        if p == 0 and flux_err is not None:
            blended = inflation > BLEND_INFLATION
            if blended.any():
                flux, inflation = joint()
        if p == 0:
            out["flux_lin"][idx] = flux[idx]
        everyone = model_image(data.shape, sampler, x, y, flux, paint, pixels=box_pix)
        fx, fy, ff = x[idx].copy(), y[idx].copy(), flux[idx].copy()
        for c in chunks:
            own = sampler.render(fx[c], fy[c], x0[c], y0[c], size) * ff[c, None, None]
            target = dbox[c] - (model_boxes(c) - own)   # this source alone, neighbours removed
            box = (x0[c], y0[c], weight[c], target, anchor_x[idx][c], anchor_y[idx][c])
            fx[c], fy[c], ff[c] = descend(box, fx[c], fy[c], ff[c])
            other = np.flatnonzero(drawn[idx[c]]) if p == 0 and x_input is not None else ()
            if len(other):
                # From the other start (the network's, with its flux): kept where it
                # leaves the smaller chi^2 in the box.
                sub = tuple(a[other] for a in box)
                src = idx[c][other]
                ox, oy, of = descend(sub, other_x[src], other_y[src], prior[src])
                better = (_box_chi2(sampler, sub, size, ox, oy, of)
                          < _box_chi2(sampler, sub, size, fx[c][other], fy[c][other],
                                      ff[c][other]))
                rows = np.arange(c.start, min(c.stop, idx.size))[other[better]]
                fx[rows], fy[rows], ff[rows] = ox[better], oy[better], of[better]
        if moves:
            wandered = np.hypot(fx - anchor_x[idx], fy - anchor_y[idx]) > _MAX_SHIFT
            fx[wandered], fy[wandered] = start_x[idx][wandered], start_y[idx][wandered]
        x[idx], y[idx] = fx, fy
    flux, inflation = joint()
    ff = flux[idx]
    # Errors of the fitted parameters only; a held one's is NaN (photutils' convention).
    sig = np.full((idx.size, 3), np.nan)
    for c in chunks:
        prof, gx, gy = sampler.render(fx[c], fy[c], x0[c], y0[c], size, derivatives=True)
        jac = np.stack([prof, ff[c, None, None] * gx, ff[c, None, None] * gy],
                       axis=1)[:, cols]
        normal = np.einsum("nipq,njpq->nij", jac * weight[c][:, None], jac)
        ok = np.isfinite(normal).all(axis=(1, 2)) & (np.abs(np.linalg.det(normal)) > 0)
        if ok.any() and cols.size:
            with np.errstate(invalid="ignore"):
                sig[np.ix_(np.flatnonzero(ok) + c.start, cols)] = np.sqrt(
                    np.diagonal(np.linalg.inv(normal[ok]), axis1=1, axis2=2))
    out["x"][idx], out["y"][idx], out["flux"][idx] = fx, fy, ff
    out["blend_inflation"][idx] = inflation[idx]
    out["blended"] = blended | (inflation > BLEND_INFLATION)
    out["flux_err"][idx] = sig[:, 0] * np.sqrt(np.maximum(inflation[idx], 1.0))
    out["x_err"][idx], out["y_err"][idx] = sig[:, 1], sig[:, 2]
    # photutils: qfit = sum |residual| / flux over the fit box; cfit = the residual in the
    # (initial) central pixel / flux. The residual is of the full model (neighbours too).
    everyone = model_image(data.shape, sampler, x, y, flux, paint, pixels=box_pix)
    grid = np.arange(size)
    for c in chunks:
        resid = np.where(valid[c], dbox[c] - model_boxes(c), 0.0)
        rows = idx[c]
        with np.errstate(divide="ignore", invalid="ignore"):
            out["qfit"][rows] = np.abs(resid).sum(axis=(1, 2)) / ff[c]
            out["cfit"][rows] = resid[:, h, h] / ff[c]
        out["chi2"][rows] = (resid**2 * weight[c]).sum(axis=(1, 2))
        # The same within a FWHM of the centre: where another source's light biases the
        # fit (a neighbour in the wings raises chi^2 but hardly the flux).
        core = (np.hypot((x0[c, None, None] + grid[None, None, :]) - fx[c, None, None],
                         (y0[c, None, None] + grid[None, :, None]) - fy[c, None, None])
                <= max(sampler.fwhm, _MIN_CORE_RADIUS)) & (weight[c] > 0)
        out["chi2_core"][rows] = (resid**2 * weight[c] * core).sum(axis=(1, 2))
        out["npix_core"][rows] = np.count_nonzero(core, axis=(1, 2))
    out["nfree"] = int(cols.size)
    dof = np.maximum(out["npix"][idx] - cols.size, 1)
    scale = np.sqrt(np.maximum(out["chi2"][idx] / dof, 1.0))
    for key in ("flux_err", "x_err", "y_err"):
        out[key][idx] *= scale
    out["chi2_scale"] = np.full(n, np.nan)
    out["chi2_scale"][idx] = scale
    return out


def _box_chi2(sampler, box, size, x, y, flux):
    """chi^2 of sources ``x, y, flux`` alone against ``box``'s target (see `fit_sources`)."""
    bx0, by0, w, target = box[:4]
    prof = sampler.render(x, y, bx0, by0, size)
    return ((target - flux[:, None, None] * prof) ** 2 * w).sum(axis=(1, 2))


def _within_bounds(x, y, anchor_x, anchor_y, bounds):
    """``x, y`` held within ``bounds`` (px, per axis; None: free) of the anchors."""
    bx, by = bounds
    if bx is not None:
        x = np.clip(x, anchor_x - bx, anchor_x + bx)
    if by is not None:
        y = np.clip(y, anchor_y - by, anchor_y + by)
    return x, y


def psf_model_error(fitted, bright, quantile=0.25):
    """
    The PSF model's relative error, from the fits' excess chi^2 on bright sources.

    A model wrong by a fraction ``eps`` of each pixel's value leaves a
    residual whose chi^2 exceeds its degrees of freedom by ``eps^2 S/N^2``.
    The ``quantile`` (default the lower quartile) over bright, unblended
    sources estimates ``eps`` for the image's point sources: galaxies among
    them, which no PSF describes, do not set it (0 when they fit to the noise;
    NaN with fewer than 5 such sources).
    """
    sel = bright & np.isfinite(fitted["chi2"]) & (fitted["flux_err"] > 0)
    if np.count_nonzero(sel) < 5:
        return np.nan
    return float(np.quantile(source_model_error(fitted)[sel], quantile))


def source_model_error(fitted, core=False):
    """
    Each source's own relative model error (0 where its chi^2 excess is not significant).

    For a galaxy, a blend with an unlisted source or a cosmic ray the PSF is
    the wrong model; this says by how much, per source. ``core``: from the
    pixels within a FWHM of the centre only.
    """
    if core:
        dof = np.maximum(fitted["npix_core"], 1)
        excess = fitted["chi2_core"] - dof
    else:
        dof = np.maximum(fitted["npix"] - fitted.get("nfree", 3), 1)
        excess = fitted["chi2"] - dof
    # The S/N of the fit before its errors were scaled by the reduced chi^2.
    scale = np.where(np.isfinite(fitted.get("chi2_scale", np.nan)), fitted.get("chi2_scale"),
                     1.0) if "chi2_scale" in fitted else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        snr2 = np.square(fitted["flux"] * scale / fitted["flux_err"])
        eps = np.sqrt(np.clip(excess, 0, None) / snr2)
    significant = excess > 3 * np.sqrt(2 * dof)
    return np.where(significant & np.isfinite(eps), eps, 0.0)
