"""
How `evaluation.synthetic` reports: method names, the docs' RST tables, the
metric plots and the wins-and-losses summary of ML against each method.

Everything here reads the per-bin metrics table of
`evaluation.synthetic.bin_metrics` (columns ``<metric>_<method>``) and nothing
else, so the tables can be regenerated from a stored ``metrics.ecsv``.
"""

from pathlib import Path

import numpy as np
from astropy.table import Table

#: All methods, in table and plot order.
METHODS = ("ml", "mlpsf", "mlauto", "sep", "aper", "sex", "psfex", "psf")
#: Methods that measure positions.
POSITION_METHODS = ("ml", "mlpsf", "mlauto", "sex", "psfex", "psf")
LABELS = {"ml": "asidfe_phot TS-MVE", "mlpsf": "asidfe_phot, psf_model=true PSF",
          "mlauto": 'asidfe_phot, psf_model="auto"',
          "sep": "sep FLUX_AUTO", "aper": "photutils aperture",
          "sex": "SourceExtractor AUTO / WIN", "psfex": "SourceExtractor + PSFEx",
          "psf": "photutils PSF fit, true PSF", "init": "input positions"}
#: Short names for table headings.
SHORT = {"ml": "ML", "mlpsf": "ML+PSF", "mlauto": "ML+auto", "sep": "sep AUTO",
         "aper": "aperture", "sex": "SE AUTO/WIN",
         "psfex": "SE PSFEx", "psf": "true-PSF fit", "init": "input"}


#: Columns of the docs table: (column, heading, decimals).
RST_COLUMNS = (
    ("n", "N", 0), ("flux_mare_ml", "MARE ML", 4), ("flux_mare_sep", "MARE sep", 4),
    ("flux_mare_aper", "MARE aper", 4), ("flux_zstd_ml", "flux z-std", 2),
    ("flux_cov68_ml", "flux cov68", 2), ("x_zstd_ml", "x z-std", 2), ("y_zstd_ml", "y z-std", 2),
    ("x_cov68_ml", "x cov68", 2), ("x_mae_ml", "x MAE", 4), ("x_mae_init", "x MAE input", 4),
    ("flux_rms_over_crlb_ml", "flux/CRLB", 2), ("x_rms_over_crlb_ml", "x/CRLB", 2),
)


def _snr_labels(metrics):
    return [f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">{lo:g}"
            for lo, hi in zip(metrics["snr_lo"], metrics["snr_hi"])]


def write_metrics_rst(metrics, path):
    """The per-bin metrics as an RST table for the docs."""
    tbl = Table()
    tbl["S/N"] = _snr_labels(metrics)
    for col, head, dec in RST_COLUMNS:
        if col in metrics.colnames:
            tbl[head] = [f"{v:.{dec}f}" if np.isfinite(v) else "-" for v in metrics[col]]
    tbl.write(path, format="ascii.rst", overwrite=True)


def _fmt(v, digits=3):
    """Compact number for the tables: 3 significant digits, no exponent below 1e5."""
    if v is None or not np.isfinite(v):
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:#.{digits}g}".rstrip(".")


def _methods_of(metrics):
    return list(metrics.meta.get("methods") or
                [m for m in METHODS if f"flux_mare_{m}" in metrics.colnames])


def method_tables(metrics):
    """
    The readable docs tables: ``{'flux', 'position', 'calibration', 'crlb', 'failures'}``.

    flux: flux MARE per method; position: position MAE (px, both axes
    pooled) of the inputs and each method; calibration: ``z-std / cov68 /
    cov95`` of flux and position per method; crlb: rms error / CRLB of flux
    and position per method; failures: per cent of sources without a usable
    result per method, and of MLPhotometry rows with flags.
    """
    methods = _methods_of(metrics)
    pos_methods = [m for m in methods if m in POSITION_METHODS]
    snr = _snr_labels(metrics)
    count = [str(int(v)) for v in metrics["n"]]

    def col(name):
        return metrics[name] if name in metrics.colnames else np.full(len(metrics), np.nan)

    flux = Table({"S/N": snr, "N": count})
    for m in methods:
        flux[SHORT[m]] = [_fmt(v) for v in col(f"flux_mare_{m}")]
    position = Table({"S/N": snr, "N": count,
                      SHORT["init"]: [_fmt(v) for v in col("pos_mae_init")]})
    for m in pos_methods:
        position[SHORT[m]] = [_fmt(v) for v in col(f"pos_mae_{m}")]
    cal_rows, crlb_rows = [], []
    for i, label in enumerate(snr):
        for qty in ("flux", "pos"):
            name = "flux" if qty == "flux" else "position"
            cal = {"S/N": label, "quantity": name}
            crlb = {"S/N": label, "quantity": name}
            for m in methods:
                if qty == "pos" and m not in pos_methods:
                    cal[SHORT[m]] = crlb[SHORT[m]] = "-"
                    continue
                z, c68, c95 = (col(f"{qty}_{k}_{m}")[i] for k in ("zstd", "cov68", "cov95"))
                cal[SHORT[m]] = ("-" if not np.isfinite(z) else
                                 f"{_fmt(z)} / {c68:.2f} / {c95:.2f}")
                crlb[SHORT[m]] = _fmt(col(f"{qty}_rms_over_crlb_{m}")[i])
            cal_rows.append(cal)
            crlb_rows.append(crlb)
    names = ["S/N", "quantity", *(SHORT[m] for m in methods)]
    calibration = Table(rows=cal_rows, names=names) if cal_rows else Table(names=names)
    crlb = Table(rows=crlb_rows, names=names) if crlb_rows else Table(names=names)
    failures = Table({"S/N": snr, "N": count})
    if "ml" in methods:
        failures["ML flagged %"] = [_fmt(100 * v, 2) for v in col("flagged_fraction_ml")]
    for m in methods:
        failures[f"{SHORT[m]} failed %"] = [_fmt(100 * v, 2) for v in col(f"failure_rate_{m}")]
    return {"flux": flux, "position": position, "calibration": calibration, "crlb": crlb,
            "failures": failures}


def write_method_tables(metrics, stem):
    """Write `method_tables` as ``<stem>_<name>.rst``; returns the paths."""
    stem = Path(stem)
    paths = []
    for name, tbl in method_tables(metrics).items():
        path = stem.with_name(f"{stem.name}_{name}.rst")
        tbl.write(path, format="ascii.rst", overwrite=True)
        paths.append(path)
    return paths


_STYLE = {"ml": ("C0", "o"), "mlpsf": ("C6", "*"), "mlauto": ("C7", "h"), "sep": ("C1", "s"),
          "aper": ("C2", "^"), "sex": ("C3", "v"),
          "psfex": ("C4", "D"), "psf": ("C5", "P"), "init": ("0.5", "x")}


def plot_metrics(metrics, path, title=None):
    """MARE, z-std and rms/CRLB of flux (top) and position (bottom) vs S/N, one line per method."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    methods = _methods_of(metrics)
    centre = np.sqrt(metrics["snr_lo"] * np.where(np.isfinite(metrics["snr_hi"]),
                                                  metrics["snr_hi"], 3 * metrics["snr_lo"]))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))

    def line(ax, m, name):
        if name in metrics.colnames and np.any(np.isfinite(metrics[name])):
            color, marker = _STYLE[m]
            ax.plot(centre, metrics[name], marker=marker, color=color, label=LABELS[m],
                    ls="--" if m == "init" else "-")

    for m in methods:
        line(axes[0, 0], m, f"flux_mare_{m}")
        line(axes[0, 1], m, f"flux_zstd_{m}")
        line(axes[0, 2], m, f"flux_rms_over_crlb_{m}")
    line(axes[1, 0], "init", "pos_mae_init")
    for m in methods:
        if m in POSITION_METHODS:
            line(axes[1, 0], m, f"pos_mae_{m}")
            line(axes[1, 1], m, f"pos_zstd_{m}")
            line(axes[1, 2], m, f"pos_rms_over_crlb_{m}")
    axes[0, 0].set(ylabel="flux MARE", yscale="log")
    # Log scale: classical errors that ignore neighbours are off by orders of magnitude.
    axes[0, 1].set(ylabel="std of flux z-score", yscale="log")
    axes[0, 2].set(ylabel="flux rms error / Cramér–Rao bound", yscale="log")
    axes[1, 0].set(ylabel="position MAE per axis (px)", yscale="log")
    axes[1, 1].set(ylabel="std of position z-score (x and y)", yscale="log")
    axes[1, 2].set(ylabel="position rms error / Cramér–Rao bound", yscale="log")
    for ax in axes.flat:
        ax.set(xscale="log", xlabel="S/N (optimal, PSF-weighted)")
        ax.grid(True, which="major", alpha=0.3)
    for ax in (axes[0, 1], axes[0, 2], axes[1, 1], axes[1, 2]):
        ax.axhline(1, color="k", lw=0.7)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _json_float(v):
    v = float(v)
    return round(v, 6) if np.isfinite(v) else None


def wins(metrics):
    """Per S/N bin and classical method: is ML's flux MARE / position MAE lower (and the ratio)?"""
    methods = _methods_of(metrics)
    if "ml" not in methods:
        return []
    others = [m for m in methods if m != "ml"]
    pos_others = ["init"] + [m for m in others if m in POSITION_METHODS]
    out = []
    for i, label in enumerate(_snr_labels(metrics)):
        entry = {"snr": label, "n": int(metrics["n"][i]),
                 "flux_mare_lower": {}, "flux_mare_ratio": {},
                 "pos_mae_lower": {}, "pos_mae_ratio": {}}
        for kind, col, pool in (("flux_mare", "flux_mare_{}", others),
                                ("pos_mae", "pos_mae_{}", pos_others)):
            ml = metrics[col.format("ml")][i] if col.format("ml") in metrics.colnames else np.nan
            for m in pool:
                name = col.format(m)
                v = metrics[name][i] if name in metrics.colnames else np.nan
                ok = np.isfinite(ml) and np.isfinite(v) and v > 0
                entry[f"{kind}_lower"][m] = bool(ml < v) if ok else None
                entry[f"{kind}_ratio"][m] = _json_float(ml / v) if ok else None
        out.append(entry)
    return out


def _win_counts(bins):
    """'won/compared' per method and kind, over the bins."""
    counts = {}
    for kind in ("flux_mare", "pos_mae"):
        per = {}
        for b in bins:
            for m, v in b[f"{kind}_lower"].items():
                if v is not None:
                    won, total = per.get(m, (0, 0))
                    per[m] = (won + int(v), total + 1)
        counts[kind] = {m: f"{w}/{t}" for m, (w, t) in per.items()}
    return counts


def modes_rst(columns, metrics):
    """
    An RST table of chosen metric columns side by side, one row per S/N bin.

    ``columns``: ``[(heading, table label, column), ...]``; ``metrics``: ``{label:
    bin_metrics table}`` (e.g. v4 and v5, each with several methods).
    """
    first = next(iter(metrics.values()))
    head = ["S/N", "N", *(h for h, _, _ in columns)]
    body = []
    for i, label in enumerate(_snr_labels(first)):
        line = [label, str(int(first["n"][i]))]
        for _, key, col in columns:
            tbl = metrics[key]
            value = float(tbl[col][i]) if col in tbl.colnames else np.nan
            line.append("n/a" if not np.isfinite(value) else
                        (f"{value:.2f}" if "zstd" in col else f"{value:.4f}"))
        body.append(line)
    return rst_text(head, body)


def rst_text(head, body):
    """An RST simple table (astropy's ``ascii.rst``) of string cells: ``head``, rows ``body``."""
    import io

    from astropy.table import Table

    tbl = Table(rows=body, names=head, dtype=[str] * len(head)) if body else Table(names=head)
    buf = io.StringIO()
    tbl.write(buf, format="ascii.rst")
    return buf.getvalue()
