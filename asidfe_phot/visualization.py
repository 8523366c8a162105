"""
Diagnostic figures for `~asidfe_phot.MLPhotometry` results.

matplotlib is imported only inside the functions. Each function returns its
`~matplotlib.figure.Figure`; pass ``fig=`` to draw into an existing figure
(e.g. a ``matplotlib.figure.Figure()`` made without pyplot in scripts).
"""

import warnings

import astropy.units as u
import numpy as np

from asidfe_phot import flags as _flags
from asidfe_phot._stamps import cutout_stamps, stamp_origin
from asidfe_phot._validation import coerce_data
from asidfe_phot.exceptions import AsidfePhotWarning

__all__ = ["plot_stamps", "plot_residuals", "plot_calibration", "plot_artificial_stars"]

#: Flags that mark a row as unreliable in the plots: all but NO_SOURCE_NOISE.
DEFAULT_BAD_FLAGS = sum(bit for bit, _, _ in _flags.FLAG_DEFINITIONS) & ~_flags.NO_SOURCE_NOISE


def _new_figure(fig, figsize):
    if fig is not None:
        return fig
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize)


def _image_values(data):
    """
    The image's values as a float64 2-D array, NaN where masked, from anything
    `~asidfe_phot.MLPhotometry` measures (as it reads it: `coerce_data`).
    """
    from astropy.nddata import NDData

    if isinstance(data, NDData):
        # The pixels and their mask are shown; an uncertainty or WCS plays no part.
        data = NDData(data.data, mask=data.mask)
    coerced = coerce_data(data, None, None, None)
    # Back from the internal power-of-two scale (exact) to the data's values.
    image = np.ldexp(coerced.image.astype(np.float64), coerced.exponent)
    if coerced.mask is not None:
        image[coerced.mask] = np.nan
    return image


def _column(table, name, unit=None, what="table"):
    if name not in table.colnames:
        msg = f"{what} has no column {name!r}; its columns are {table.colnames}"
        raise ValueError(msg)
    col = table[name]
    if isinstance(col, u.Quantity):
        return col.value if unit is None else col.to_value(unit)
    return np.asarray(col, dtype=np.float64)


def plot_stamps(data, table, n=16, *, ncols=None, size=32, sort_by="snr", error_scale=1.0,
                fig=None):
    """
    Image stamps with the predicted centres and their 1-sigma error ellipses.

    Each panel shows a ``size`` x ``size`` cut-out (asinh stretch, per-stamp
    limits) around a source, the input position (white ``+``), the fitted
    position ``x_fit, y_fit`` (red ``x``) and the 1-sigma error ellipse with
    semi-axes ``x_err``, ``y_err`` (red; axis-aligned, as the model predicts
    no covariance). The title gives ``id``, S/N (``flux_fit / flux_err``) and
    the flag names, if any.

    Parameters
    ----------
    data : 2-D array, `~astropy.units.Quantity`, `~numpy.ma.MaskedArray` or `~astropy.nddata.NDData`
        The image the table was measured on (masked pixels are shown blank).
    table : `~astropy.table.Table`
        An `~asidfe_phot.MLPhotometry` result: needs ``x_fit, y_fit, x_err,
        y_err``; uses ``id, x_init, y_init, flux_fit, flux_err, flags`` when
        present.
    n : int, optional
        Number of stamps to show (at most the table length).
    ncols : int, optional
        Panels per row. Default: about the square root of ``n``.
    size : int, optional
        Stamp size in pixels.
    sort_by : {'snr', None}, optional
        ``'snr'`` shows the ``n`` rows of highest S/N (rows without a fit
        last); `None` the first ``n`` rows in table order.
    error_scale : float, optional
        Multiply the ellipse semi-axes by this (bright sources have errors of
        a few hundredths of a pixel, too small to see at 1x).
    fig : `~matplotlib.figure.Figure`, optional
        The figure to draw into (cleared). Default: a new pyplot figure.

    Returns
    -------
    `~matplotlib.figure.Figure`

    Raises
    ------
    ValueError
        If ``data`` is not 2-D, the table lacks a required column, or ``n``,
        ``size`` or ``sort_by`` is invalid.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("agg")
    >>> from asidfe_phot import MLPhotometry
    >>> from asidfe_phot.datasets import load_demo_image
    >>> from asidfe_phot.visualization import plot_stamps
    >>> data, header, cat = load_demo_image()
    >>> tbl = MLPhotometry()(data, init_params=cat[:4])  # doctest: +SKIP
    >>> fig = plot_stamps(data, tbl, n=4)  # doctest: +SKIP
    """
    from astropy.visualization import AsinhStretch, ImageNormalize
    from matplotlib.patches import Ellipse

    if int(n) != n or n < 1:
        msg = f"n must be a positive integer, got {n!r}"
        raise ValueError(msg)
    if int(size) != size or size < 4:
        msg = f"size must be an integer of at least 4 pixels, got {size!r}"
        raise ValueError(msg)
    if sort_by not in ("snr", None):
        msg = f"sort_by must be 'snr' or None, got {sort_by!r}"
        raise ValueError(msg)
    image = _image_values(data)
    xf, yf = _column(table, "x_fit"), _column(table, "y_fit")
    xe, ye = _column(table, "x_err"), _column(table, "y_err")
    xi = _column(table, "x_init") if "x_init" in table.colnames else xf
    yi = _column(table, "y_init") if "y_init" in table.colnames else yf
    ids = np.asarray(table["id"]) if "id" in table.colnames else np.arange(1, len(table) + 1)
    has_flux = "flux_fit" in table.colnames and "flux_err" in table.colnames
    if has_flux:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = _column(table, "flux_fit") / _column(table, "flux_err")
    else:
        snr = np.full(len(table), np.nan)
    flags = (np.asarray(table["flags"]) if "flags" in table.colnames
             else np.zeros(len(table), dtype=int))

    order = np.arange(len(table))
    if sort_by == "snr":
        key = np.where(np.isfinite(snr), -snr, np.inf)
        order = np.argsort(key, kind="stable")
    order = order[:int(n)]

    count = max(len(order), 1)
    ncols = int(ncols) if ncols else int(np.ceil(np.sqrt(count)))
    nrows = int(np.ceil(count / ncols))
    fig = _new_figure(fig, (2.2 * ncols, 2.4 * nrows))
    fig.clear()
    if not len(order):
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no sources", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[len(order):]:
        ax.set_axis_off()
    size = int(size)
    # Stamps around the input positions (the fitted ones where there is none), NaN outside
    # the image, cut as MLPhotometry cuts them.
    centre_x = np.where(np.isfinite(xi), xi, xf)[order]
    centre_y = np.where(np.isfinite(yi), yi, yf)[order]
    placed = np.isfinite(centre_x) & np.isfinite(centre_y)
    centre_x, centre_y = np.where(placed, centre_x, -size), np.where(placed, centre_y, -size)
    stamps, _ = cutout_stamps(image, centre_x, centre_y, size, fill=np.nan)
    origins_x, origins_y = stamp_origin(centre_x, size), stamp_origin(centre_y, size)
    for ax, i, stamp, x0, y0 in zip(axes, order, stamps, origins_x, origins_y):
        finite = stamp[np.isfinite(stamp)]
        if finite.size:
            lo, hi = np.percentile(finite, [1.0, 99.9])
            hi = hi if hi > lo else lo + 1.0
        else:
            lo, hi = 0.0, 1.0
        norm = ImageNormalize(vmin=lo, vmax=hi, stretch=AsinhStretch(), clip=True)
        extent = (x0 - 0.5, x0 + size - 0.5, y0 - 0.5, y0 + size - 0.5)
        ax.imshow(stamp, origin="lower", cmap="gray", norm=norm, extent=extent,
                  interpolation="nearest")
        ax.plot(xi[i], yi[i], "+", color="white", ms=8, mew=1.0)
        if np.isfinite(xf[i]) and np.isfinite(yf[i]):
            ax.plot(xf[i], yf[i], "x", color="red", ms=6, mew=1.2)
            if np.isfinite(xe[i]) and np.isfinite(ye[i]):
                ax.add_patch(Ellipse((xf[i], yf[i]), 2 * error_scale * xe[i],
                                     2 * error_scale * ye[i], fill=False, ec="red", lw=1.0))
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        title = f"id {ids[i]}"
        title += f"  S/N {snr[i]:.3g}" if np.isfinite(snr[i]) else "  no fit"
        names = _flags.decode_flags(int(flags[i]))
        if names:
            title += "\n" + ",".join(names)
        ax.set_title(title, fontsize=7)
        ax.tick_params(labelsize=6)
    note = "+ input, x fit, ellipse 1-sigma"
    if error_scale != 1:
        note += f" (x{error_scale:g})"
    fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    return fig


def _match(table, reference, match):
    if isinstance(match, str):
        tcol = rcol = match
    else:
        try:
            tcol, rcol = match
        except (TypeError, ValueError):
            msg = f"match must be a column name or a (table, reference) pair, got {match!r}"
            raise ValueError(msg) from None
    for tab, col, what in ((table, tcol, "table"), (reference, rcol, "reference")):
        if col not in tab.colnames:
            msg = (f"{what} has no column {col!r} to match on; its columns are {tab.colnames}; "
                   "give match=(table_column, reference_column)")
            raise ValueError(msg)
    rkeys = np.asarray(reference[rcol])
    if np.unique(rkeys).size != rkeys.size:
        msg = f"reference column {rcol!r} has duplicate values; cannot match rows"
        raise ValueError(msg)
    lookup = {key: j for j, key in enumerate(rkeys.tolist())}
    tkeys = np.asarray(table[tcol]).tolist()
    ti = np.array([i for i, key in enumerate(tkeys) if key in lookup], dtype=int)
    ri = np.array([lookup[tkeys[i]] for i in ti], dtype=int)
    if not ti.size:
        msg = f"no row of the table matches the reference on {tcol!r} / {rcol!r}"
        raise ValueError(msg)
    return ti, ri


def _flux_unit(table, col, reference, rcol):
    tunit = getattr(table[col], "unit", None)
    runit = getattr(reference[rcol], "unit", None)
    tunit = None if tunit in (None, u.dimensionless_unscaled) else tunit
    runit = None if runit in (None, u.dimensionless_unscaled) else runit
    if (tunit is None) != (runit is None):
        msg = (f"the table's {col!r} has unit {tunit} and the reference's {rcol!r} has unit "
               f"{runit}; comparing the values as if they had the same unit")
        warnings.warn(msg, AsidfePhotWarning, stacklevel=3)
        return None
    return tunit


def plot_residuals(table, reference, *, match="id", flux="flux_fit", flux_err="flux_err",
                   reference_flux="flux", reference_flux_err=None, bad_flags=DEFAULT_BAD_FLAGS,
                   nbins=8, fig=None):
    """
    Flux residuals and z-scores against a reference catalogue, versus S/N.

    Rows are matched on ``match``. Left: the relative residual
    ``(flux - reference_flux) / reference_flux`` (top) and the z-score
    ``(flux - reference_flux) / sqrt(flux_err**2 + reference_flux_err**2)``
    (bottom) against S/N = ``flux / flux_err`` (log scale), with the median
    and the standard deviation of the z-score in S/N bins; calibrated errors
    give a median near 0 and a standard deviation near 1 in every bin.
    Right: histograms of both, the z-scores with the N(0, 1) density.
    Rows with any of ``bad_flags`` set are drawn grey and left out of the
    statistics.

    Parameters
    ----------
    table : `~astropy.table.Table`
        An `~asidfe_phot.MLPhotometry` result (or any table with the columns
        named by ``flux``, ``flux_err`` and ``match``).
    reference : `~astropy.table.Table`
        The truth or reference catalogue, e.g. the ``truth`` table of
        `asidfe_phot.datasets.make_star_field` (``id, flux``) or a
        SourceExtractor catalogue (``reference_flux='FLUX_AUTO'``,
        ``reference_flux_err='FLUXERR_AUTO'``).
    match : str or (str, str), optional
        The column to match rows on, or a pair (table column, reference
        column). Reference values must be unique; unmatched rows are dropped.
    flux, flux_err : str, optional
        Flux and 1-sigma error columns of ``table``.
    reference_flux : str, optional
        Flux column of ``reference``.
    reference_flux_err : str, optional
        Its 1-sigma error column; `None` for an exact truth.
    bad_flags : int, optional
        Bitmask of ``flags`` bits that exclude a row from the statistics.
        Default: every flag except ``NO_SOURCE_NOISE``. 0 keeps all rows.
    nbins : int, optional
        Number of logarithmic S/N bins for the running statistics.
    fig : `~matplotlib.figure.Figure`, optional
        The figure to draw into (cleared). Default: a new pyplot figure.

    Returns
    -------
    `~matplotlib.figure.Figure`
        ``fig.axes`` are: residual vs S/N, residual histogram, z-score vs S/N,
        z-score histogram.

    Raises
    ------
    ValueError
        A missing column, duplicate reference keys or no matched row.
    astropy.units.UnitsError
        If the fluxes have incompatible units.

    Warns
    -----
    AsidfePhotWarning
        If only one of the two flux columns has a unit (values are compared
        as if in the same unit).
    """
    if int(nbins) != nbins or nbins < 1:
        msg = f"nbins must be a positive integer, got {nbins!r}"
        raise ValueError(msg)
    ti, ri = _match(table, reference, match)
    for tab, names, what in ((table, (flux, flux_err), "table"),
                             (reference, (reference_flux, reference_flux_err), "reference")):
        for name in names:
            if name is not None and name not in tab.colnames:
                msg = f"{what} has no column {name!r}; its columns are {tab.colnames}"
                raise ValueError(msg)
    unit = _flux_unit(table, flux, reference, reference_flux)
    f = _column(table, flux, unit)[ti]
    fe = _column(table, flux_err, unit)[ti]
    rf = _column(reference, reference_flux, unit, "reference")[ri]
    if reference_flux_err is not None:
        rfe = _column(reference, reference_flux_err, unit, "reference")[ri]
    else:
        rfe = np.zeros_like(rf)
    flags = (np.asarray(table["flags"])[ti] if "flags" in table.colnames
             else np.zeros(ti.size, dtype=int))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = f / fe
        rel = (f - rf) / rf
        z = (f - rf) / np.hypot(fe, rfe)
    finite = np.isfinite(snr) & (snr > 0) & np.isfinite(rel) & np.isfinite(z)
    good = finite & ((flags & int(bad_flags)) == 0)
    bad = finite & ~good

    fig = _new_figure(fig, (9.0, 6.5))
    fig.clear()
    axes = fig.subplots(2, 2, sharey="row", gridspec_kw={"width_ratios": (3, 1)})
    (ax_rel, ax_relh), (ax_z, ax_zh) = axes
    for ax, values in ((ax_rel, rel), (ax_z, z)):
        ax.scatter(snr[bad], values[bad], s=10, c="0.6", marker="x", lw=0.8,
                   label=f"flagged ({int(bad.sum())})")
        ax.scatter(snr[good], values[good], s=10, c="C0", alpha=0.7,
                   label=f"unflagged ({int(good.sum())})")
        ax.axhline(0.0, color="k", lw=0.8)
        if finite.any():
            ax.set_xscale("log")
    ax_z.axhspan(-1.0, 1.0, color="C2", alpha=0.15, label="N(0,1) 1-sigma")
    if good.sum() >= 2:
        edges = np.geomspace(snr[good].min(), snr[good].max() * (1 + 1e-9), int(nbins) + 1)
        which = np.digitize(snr[good], edges) - 1
        centres, med, std = [], [], []
        for k in range(int(nbins)):
            sel = which == k
            if sel.sum() >= 3:
                centres.append(np.sqrt(edges[k] * edges[k + 1]))
                med.append(np.median(z[good][sel]))
                std.append(np.std(z[good][sel]))
        if centres:
            ax_z.plot(centres, med, "o-", color="C1", ms=4, label="binned median")
            ax_z.plot(centres, std, "s--", color="C3", ms=4, label="binned std (expect 1)")
    ax_rel.set_ylabel(f"({flux} - ref) / ref")
    ax_z.set_ylabel("z = (flux - ref) / sigma")
    ax_z.set_xlabel(f"S/N = {flux} / {flux_err}")
    ax_rel.legend(fontsize=7, loc="best")
    ax_z.legend(fontsize=7, loc="best")

    def _hist(ax, values, gaussian):
        if values.size:
            lo, hi = np.percentile(values, [0.5, 99.5])
            if gaussian:
                lo, hi = min(lo, -4.0), max(hi, 4.0)
            hi = hi if hi > lo else lo + 1.0
            ax.hist(values, bins=30, range=(lo, hi), density=True, orientation="horizontal",
                    color="C0", alpha=0.6)
        if gaussian:
            grid = np.linspace(-4, 4, 200)
            ax.plot(np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), grid, color="C2",
                    label="N(0,1)")
            text = (f"median {np.median(values):.2f}\nstd {np.std(values):.2f}" if values.size
                    else "no data")
            ax.text(0.95, 0.95, text, ha="right", va="top", fontsize=7,
                    transform=ax.transAxes)
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("density")

    _hist(ax_relh, rel[good], gaussian=False)
    _hist(ax_zh, z[good], gaussian=True)
    ref_name = f"{reference_flux}" + (f" +- {reference_flux_err}" if reference_flux_err else "")
    fig.suptitle(f"{flux} vs reference {ref_name} ({ti.size} matched rows)", fontsize=9)
    fig.tight_layout()
    return fig


def _as_names(value, what):
    if isinstance(value, str):
        return [value]
    if value is None:
        return None
    names = list(value)
    if not names or not all(isinstance(v, str) for v in names):
        msg = f"{what} must be a column name or a sequence of column names, got {value!r}"
        raise ValueError(msg)
    return names


def plot_calibration(table, value_col, truth_col, error_col, *, truth_error_col=None,
                     labels=None, bad_flags=DEFAULT_BAD_FLAGS, zmax=5.0, fig=None):
    """
    Calibration of predicted uncertainties against a truth or reference column.

    For each quantity, the z-score ``z = (value - truth) / sqrt(error**2 +
    truth_error**2)``. Left: the histograms of ``z`` with the N(0, 1)
    density (well-calibrated errors follow it; wider means underestimated
    errors, narrower overestimated). Right: coverage against nominal
    confidence: the fraction of rows whose central interval of nominal
    probability ``p`` (``|z| < Phi^-1((1 + p) / 2)``) contains the truth,
    against ``p``; calibrated errors lie on the diagonal, overconfident
    ones below it.

    Parameters
    ----------
    table : `~astropy.table.Table`
        Any result table with a truth or reference column, e.g. a
        `~asidfe_phot.MLPhotometry` result with the simulator's truths
        joined, or ``training/evaluate.py``'s ``results.ecsv``.
    value_col, truth_col, error_col : str or sequence of str
        The predicted value, the truth (or reference) and the predicted
        1-sigma error columns; sequences of equal length overlay several
        quantities (e.g. ``["x_fit", "y_fit", "flux_fit"]``).
    truth_error_col : str or sequence of str, optional
        1-sigma errors of a reference that is not exact, added in
        quadrature (same length as ``value_col``; `None` for exact truths).
    labels : sequence of str, optional
        Legend labels; default the value column names.
    bad_flags : int, optional
        Rows with any of these ``flags`` bits set are left out (when the
        table has a ``flags`` column). 0 keeps all rows.
    zmax : float, optional
        Histogram range ``[-zmax, zmax]`` (rows outside are counted in
        the statistics, not drawn).
    fig : `~matplotlib.figure.Figure`, optional
        The figure to draw into (cleared). Default: a new pyplot figure.

    Returns
    -------
    `~matplotlib.figure.Figure`
        ``fig.axes`` are the z histogram and the coverage plot. The legend
        gives, per quantity, the number of rows, the median and standard
        deviation of ``z`` and the 68.3% coverage.

    Raises
    ------
    ValueError
        Missing columns, column lists of different lengths, or a quantity
        without a single usable (finite) row.

    Warns
    -----
    AsidfePhotWarning
        If only one of a value and its truth column has a unit.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("agg")
    >>> import numpy as np
    >>> from astropy.table import Table
    >>> from asidfe_phot.visualization import plot_calibration
    >>> rng = np.random.default_rng(0)
    >>> tbl = Table({"flux_true": rng.uniform(100, 1000, 500)})
    >>> tbl["flux_err"] = 0.05 * tbl["flux_true"]
    >>> tbl["flux_fit"] = tbl["flux_true"] + rng.normal(0, tbl["flux_err"])
    >>> fig = plot_calibration(tbl, "flux_fit", "flux_true", "flux_err")
    >>> len(fig.axes)
    2
    """
    from scipy import stats

    values = _as_names(value_col, "value_col")
    truths = _as_names(truth_col, "truth_col")
    errors = _as_names(error_col, "error_col")
    terrs = _as_names(truth_error_col, "truth_error_col")
    lists = {"truth_col": truths, "error_col": errors}
    if terrs is not None:
        lists["truth_error_col"] = terrs
    if labels is not None:
        labels = [str(v) for v in labels]
        lists["labels"] = labels
    for name, items in lists.items():
        if len(items) != len(values):
            msg = (f"{name} has {len(items)} entries but value_col has {len(values)}; "
                   "give one per quantity")
            raise ValueError(msg)
    if not zmax > 0:
        msg = f"zmax must be positive, got {zmax!r}"
        raise ValueError(msg)
    labels = labels or values
    flags = np.asarray(table["flags"]) if "flags" in table.colnames else None
    keep = np.ones(len(table), dtype=bool)
    if flags is not None:
        keep = (flags & int(bad_flags)) == 0
    zs = []
    for k, (vcol, tcol, ecol) in enumerate(zip(values, truths, errors)):
        for col in (vcol, tcol, ecol) + ((terrs[k],) if terrs else ()):
            _column(table, col)  # raises a clear error for a missing column
        unit = _flux_unit(table, vcol, table, tcol)
        v = _column(table, vcol, unit)
        t = _column(table, tcol, unit)
        e = _column(table, ecol, unit)
        te = _column(table, terrs[k], unit) if terrs else np.zeros_like(e)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (v - t) / np.hypot(e, te)
        z = z[keep & np.isfinite(z)]
        if not z.size:
            msg = f"no usable row for {vcol!r} (all non-finite, zero error or flagged)"
            raise ValueError(msg)
        zs.append(z)

    fig = _new_figure(fig, (10.0, 4.2))
    fig.clear()
    ax_h, ax_c = fig.subplots(1, 2)
    grid = np.linspace(-zmax, zmax, 400)
    edges = np.linspace(-zmax, zmax, 41)
    nominal = np.linspace(0.0, 1.0, 101)
    limits = stats.norm.ppf(0.5 + nominal / 2)
    for k, (z, label) in enumerate(zip(zs, labels)):
        cov68 = float(np.mean(np.abs(z) < 1.0))
        text = (f"{label}: n={z.size}, median {np.median(z):.2f}, std {np.std(z):.2f}, "
                f"68% cov. {cov68:.2f}")
        ax_h.hist(np.clip(z, -zmax, zmax), bins=edges, density=True, histtype="step", lw=1.5,
                  color=f"C{k}", label=text)
        empirical = np.mean(np.abs(z)[:, None] < limits[None, :], axis=0)
        ax_c.plot(nominal, empirical, color=f"C{k}", lw=1.5, label=label)
    ax_h.plot(grid, stats.norm.pdf(grid), color="k", lw=1.0, ls="--", label="N(0, 1)")
    ax_h.set(xlabel="z = (value - truth) / sigma", ylabel="density", xlim=(-zmax, zmax))
    ax_h.legend(fontsize=7, loc="upper left")
    ax_c.plot([0, 1], [0, 1], color="k", lw=1.0, ls="--", label="calibrated")
    ax_c.axvline(0.683, color="0.7", lw=0.8)
    ax_c.set(xlabel="nominal coverage", ylabel="empirical coverage", xlim=(0, 1), ylim=(0, 1),
             aspect="equal")
    ax_c.legend(fontsize=7, loc="lower right")
    ax_c.text(0.03, 0.97, "below the diagonal: errors too small\nabove: errors too large",
              transform=ax_c.transAxes, va="top", fontsize=7)
    fig.tight_layout()
    return fig


def plot_artificial_stars(bins, *, title=None, fig=None):
    """
    The summary of an artificial-star test against S/N.

    Four panels, each point a bin at its stars' median true S/N: the
    completeness (with its binomial error; the dotted line marks 50 %); the
    median flux bias with the robust flux scatter as error bars; the robust
    position scatter (px); and the z-score std of flux, x and y (solid: the
    plain std; dashed: the robust 1.4826 MAD), 1 for calibrated errors.

    Parameters
    ----------
    bins : `~astropy.table.Table`
        The per-bin table of `asidfe_phot.artificial_stars.artificial_star_test`
        (or `~asidfe_phot.artificial_stars.bin_statistics`).
    title : str, optional
        A title above the panels.
    fig : `~matplotlib.figure.Figure`, optional
        The figure to draw into (cleared). Default: a new pyplot figure.

    Returns
    -------
    `~matplotlib.figure.Figure`

    Raises
    ------
    ValueError
        If ``bins`` lacks a column or has no row.
    """
    names = ("snr_median", "completeness", "completeness_err", "flux_bias", "flux_scatter",
             "position_scatter", "zstd_flux", "zstd_x", "zstd_y", "zstd_flux_robust",
             "zstd_x_robust", "zstd_y_robust")
    col = {name: _column(bins, name, what="bins") for name in names}
    if not len(bins):
        msg = "bins has no row: nothing to plot"
        raise ValueError(msg)
    snr = col["snr_median"]
    fig = _new_figure(fig, (10.0, 7.5))
    fig.clear()
    (ax_c, ax_f), (ax_p, ax_z) = fig.subplots(2, 2, sharex=True)
    ax_c.errorbar(snr, col["completeness"], yerr=col["completeness_err"], marker="o",
                  color="C0", capsize=2)
    ax_c.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax_c.set(ylabel="completeness (found / injected)", ylim=(-0.03, 1.05))
    ax_f.errorbar(snr, col["flux_bias"], yerr=col["flux_scatter"], marker="o", color="C1",
                  capsize=2, label="median bias, bars: 1.4826 MAD")
    ax_f.axhline(0, color="k", lw=0.8)
    ax_f.set(ylabel="flux_fit / flux_true - 1")
    ax_f.legend(fontsize=7)
    ax_p.plot(snr, col["position_scatter"], marker="o", color="C2")
    ax_p.set(yscale="log", ylabel="position scatter (px, 1.4826 MAD)")
    for k, q in enumerate(("flux", "x", "y")):
        ax_z.plot(snr, col[f"zstd_{q}"], marker="o", color=f"C{k + 3}", label=f"{q}: std")
        ax_z.plot(snr, col[f"zstd_{q}_robust"], ls="--", color=f"C{k + 3}",
                  label=f"{q}: 1.4826 MAD")
    ax_z.axhline(1, color="k", lw=0.8)
    ax_z.set(yscale="log", ylabel="z-score std, z = (value - truth) / err")
    ax_z.legend(fontsize=7, ncol=2, loc="best")
    if title is not None:
        fig.suptitle(title, fontsize=10)
    for ax in (ax_c, ax_f, ax_p, ax_z):
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    for ax in (ax_p, ax_z):
        ax.set_xlabel("true optimal S/N of the injected stars")
    fig.tight_layout()
    return fig
