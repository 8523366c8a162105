"""
The network's measurement of each source (private): stamps cut from the prepared image,
the stamps' flags, the network run in batches and its outputs decoded to pixels and
fluxes (in internal units), with the model card's calibrations as chosen.
"""

import sys

import numpy as np

from asidfe_phot import _onnx, _progress, _stamps
from asidfe_phot import _thresholds as _t
from asidfe_phot import flags as _flags

__all__ = []  # private module


class NetworkOptions:
    """What `measure` needs of an `~asidfe_phot.MLPhotometry` (one per call)."""

    def __init__(self, session, n_channels, batch_size, max_shift, calibration=None,
                 flux_bias=None, progress_bar=False):
        self.session = session                  # onnxruntime session
        self.n_channels = n_channels            # the model's input channels (contract)
        self.batch_size = batch_size            # stamps per network call
        self.max_shift = max_shift              # px: LARGE_SHIFT beyond
        self.calibration = calibration          # the card's sigma_calibration, or None
        self.flux_bias = flux_bias              # the card's flux_bias_correction, or None
        self.progress_bar = progress_bar


def measure(prepared, x, y, options, sampler=None, local_bkg=None):
    """
    Per-source results of the network (see `NetworkOptions`); rows without a usable
    position are NaN and NO_POSITION.

    ``local_bkg``: per source, a level (internal units) subtracted from its stamp on top
    of the 2-D background (the local annulus background), or None.
    """
    located = np.isfinite(x) & np.isfinite(y)
    if located.all():
        return _measure_located(prepared, x, y, options, sampler, local_bkg)
    inner = _measure_located(prepared, x[located], y[located], options, sampler,
                             None if local_bkg is None else local_bkg[located])
    out = {}
    for key, values in inner.items():
        full = np.full(x.size, np.nan) if values.dtype.kind == "f" else np.zeros(
            x.size, values.dtype)
        full[located] = values
        out[key] = full
    out["x_init"], out["y_init"] = x, y
    out["flags"][~located] |= _flags.NO_POSITION
    return out


def _measure_located(prepared, x, y, options, sampler=None, local_bkg=None):
    n = x.size
    out = {k: np.full(n, np.nan) for k in ("x_fit", "y_fit", "flux_fit", "x_err", "y_err",
                                           "flux_err")}
    out["flags"] = np.zeros(n, dtype=np.int32)
    out["snr_core"] = np.full(n, np.nan)
    out["x_init"], out["y_init"] = x, y
    size = _stamps.STAMP_SIZE
    ref = size // 2
    core = slice(ref - _t.CORE_RADIUS, ref + _t.CORE_RADIUS + 1)
    sat = slice(ref - _t.SATURATION_RADIUS, ref + _t.SATURATION_RADIUS + 1)
    local = None if local_bkg is None else np.asarray(local_bkg, dtype=np.float32)
    report = _progress_reporter(n, options.progress_bar)
    # Sources by row: a batch's stamps then share a band of rows, whose maps are cheaper
    # evaluated whole (`_band`). Each source's numbers do not depend on its batch.
    order = np.argsort(y, kind="stable")
    for start in range(0, n, options.batch_size):
        sl = order[start:start + options.batch_size]
        bx, by = x[sl], y[sl]
        source, first_row = _band(prepared, by, size)
        cut_y = by - first_row
        data, inside = _stamps.cutout_stamps(source.subtracted, bx, cut_y, size)
        valid = inside
        if source.bad is not None:
            bad, _ = _stamps.cutout_stamps(source.bad, bx, cut_y, size, fill=True)
            valid = inside & ~bad
        if local is not None:
            data = data - local[sl, None, None]
        if source.error is not None:
            error, _ = _stamps.cutout_stamps(source.error, bx, cut_y, size, fill=1.0)
        else:
            rms, _ = _stamps.cutout_stamps(source.rms, bx, cut_y, size, fill=1.0)
            error = _stamps.total_error(data, rms, prepared.gain)
        scale = _stamps.noise_scale(error, valid)
        psf = None
        if sampler is not None:
            psf = sampler.stamps(_stamps.reference_pixel(bx), _stamps.reference_pixel(by),
                                 size)
        inputs, unit = _stamps.encode_inputs(
            data, error, valid, scale, psf_stamps=psf if options.n_channels == 3 else None,
            n_channels=options.n_channels)
        # Per-stamp reductions once, and only over the stamps that need them (most stamps
        # are whole and unmasked).
        whole = inside.all(axis=(1, 2))
        valid_all = whole if valid is inside else valid.all(axis=(1, 2))
        valid_any = valid_all.copy()
        valid_any[~valid_all] = valid[~valid_all].any(axis=(1, 2))
        usable = valid_any & np.isfinite(scale) & (scale > 0) & np.isfinite(unit)
        f = np.zeros(len(scale), dtype=np.int32)
        f[~whole] |= _flags.EDGE
        f[~valid_all & whole] |= _flags.MASKED
        if prepared.bad is not None:
            f[(~valid[:, core, core]).any(axis=(1, 2)) & inside[:, core, core].all(
                axis=(1, 2))] |= _flags.CORE_MASKED | _flags.MASKED
        f[~usable] |= _flags.NO_OVERLAP
        if prepared.saturation is not None:
            raw, _ = _stamps.cutout_stamps(source.raw, bx, cut_y, size, fill=-np.inf)
            f[(raw[:, sat, sat] >= prepared.saturation).any(axis=(1, 2))] |= _flags.SATURATED
        if prepared.error is None and prepared.gain is None:
            f |= _flags.NO_SOURCE_NOISE
        f[_compact(data, error, valid, ref, psf)] |= _flags.COMPACT
        idx = np.flatnonzero(usable)
        # Every stamp usable (the common case): the arrays as they are, not fancy-indexed
        # copies (a batch's inputs alone are 25 MB).
        pick = slice(None) if idx.size == usable.size else idx
        if idx.size:
            snr_core = _stamps.core_snr(data[pick], error[pick], valid[pick])
            gl = sl[idx]
            out["snr_core"][gl] = snr_core
            res = _stamps.decode_outputs(_onnx.run(options.session, inputs[pick]),
                                         unit[pick], options.calibration, snr_core,
                                         options.flux_bias)
            rx = _stamps.reference_pixel(bx[idx])
            ry = _stamps.reference_pixel(by[idx])
            xf, yf = rx + res["dx"], ry + res["dy"]
            out["x_fit"][gl], out["y_fit"][gl] = xf, yf
            out["flux_fit"][gl] = res["flux"]
            out["x_err"][gl], out["y_err"][gl] = res["dx_err"], res["dy_err"]
            out["flux_err"][gl] = res["flux_err"]
            shift = np.hypot(xf - bx[idx], yf - by[idx])
            f[idx[shift > options.max_shift]] |= _flags.LARGE_SHIFT
            snr = res["flux"] / res["flux_err"]
            f[idx[(snr < _t.SNR_RANGE[0]) | (snr > _t.SNR_RANGE[1])]] |= _flags.OUTSIDE_TRAINING
            f[idx[res["flux"] <= 0]] |= _flags.NONPOSITIVE_FLUX
        out["flags"][sl] |= f
        report.update(sl.size)
    report.close()
    return out


#: A batch reads its band of rows whole when the band has at most this many times the
#: pixels of its stamps (a map costs ~1.5 ns per pixel row by row, ~10 ns at a stamp's).
BAND_PIXELS_PER_STAMP_PIXEL = 4


def _band(prepared, y, size):
    """
    Where a batch's stamps are cut from: the rows they span (a `~asidfe_phot._prepare.
    RowBand`, and its first row) when that band is small enough, else ``prepared``
    itself (and 0).
    """
    if not hasattr(prepared, "rows") or y.size == 0:
        return prepared, 0
    ny, nx = prepared.shape
    origin = _stamps.stamp_origin(y, size)
    first, stop = max(int(origin.min()), 0), min(int(origin.max()) + size, ny)
    if stop <= first or (stop - first) * nx > BAND_PIXELS_PER_STAMP_PIXEL * y.size * size**2:
        return prepared, 0
    return prepared.rows(first, stop), first


def _compact(data, error, valid, ref, psf=None):
    """
    Rows whose central 3x3 pixels are dominated by one pixel at a significant S/N. With
    the frame's PSF (``psf``: its stamps at the rows' reference pixels), the limit is
    also at least halfway between the PSF's own peak fraction and a single pixel: on
    undersampled data the stars themselves exceed ``COMPACT_PEAK_FRACTION`` and are not
    artefacts.
    """
    box = (slice(None), slice(ref - 1, ref + 2), slice(ref - 1, ref + 2))
    d = np.where(valid[box], data[box], 0.0)
    total = d.sum(axis=(1, 2))
    noise = np.sqrt(np.where(valid[box], np.square(error[box], dtype=np.float64), 0.0).sum(
        axis=(1, 2)))
    limit = _t.COMPACT_PEAK_FRACTION
    if psf is not None:
        core = psf[box]
        with np.errstate(divide="ignore", invalid="ignore"):
            own = core.max(axis=(1, 2)) / core.sum(axis=(1, 2))
        limit = np.maximum(limit, np.where(np.isfinite(own), 0.5 * (1.0 + own), limit))
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((total > _t.COMPACT_MIN_SNR * noise)
                & (d.max(axis=(1, 2)) > limit * total))


def _progress_reporter(n, enabled):
    """
    Progress of ``n`` sources to stderr, with an ETA (see `asidfe_phot._progress.Progress`):
    one updated line on a terminal, whole lines at each tenth in a log.
    """
    return _progress.Progress(n, "MLPhotometry", unit="sources", enabled=enabled and n > 0,
                              stream=sys.stderr)
