"""
Accuracy of a model on held-out simulated frames, side by side with classical photometry.

    python -m training.evaluate --model models/asidfe_tsmve_v1 --data runs/data_v1 \
        --n-frames 60 --out runs/v1/evaluation

Test frames are re-simulated in full from the data set's seeds (the test split
is by frame), so every method sees the same image and the same detector
positions. Methods: asidfe_phot `MLPhotometry` (the exported ONNX model, the
user's code path), SourceExtractor's FLUX_AUTO through ``sep`` (Kron radius,
2.5 Kron radii, minimum circle 3.5 px), and photutils circular apertures
(radius 1.5 FWHM, corrected with the true PSF's enclosed fraction).
The yardstick is the Cramér–Rao bound of a fit with the true PSF.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from astropy.table import QTable, Table

from training import simulate as simulate_mod

SNR_BINS = (3, 5, 10, 20, 50, 100, 300, 1000, np.inf)


def _sep_flux_auto(sub, objects, rms, gain):
    import sep

    kron, _ = sep.kron_radius(sub, objects["x"], objects["y"], objects["a"], objects["b"],
                              objects["theta"], 6.0)
    kron = np.nan_to_num(kron, nan=0.0)
    # SourceExtractor's minimum circle (r = 3.5 px) where the Kron ellipse is smaller
    # (or undefined).
    small = kron * np.sqrt(objects["a"] * objects["b"]) < 1.75
    flux = np.full(len(objects), np.nan)
    err = np.full(len(objects), np.nan)
    a, b, theta = objects["a"], objects["b"], objects["theta"]
    # sep rejects degenerate ellipses (it checks a >= b > 0 and |theta| <= pi/2):
    # those get the circle too.
    shape_ok = (np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (b > 0) & (a >= b)
                & (np.abs(theta) <= np.pi / 2) & np.isfinite(kron) & (kron > 0))
    small |= ~shape_ok
    big = ~small
    if big.any():
        o = objects[big]
        flux[big], err[big], _ = sep.sum_ellipse(sub, o["x"], o["y"], o["a"], o["b"],
                                                 o["theta"], 2.5 * kron[big], err=rms,
                                                 gain=gain, subpix=1)
    if small.any():
        flux[small], err[small], _ = sep.sum_circle(sub, objects["x"][small],
                                                    objects["y"][small], 3.5, err=rms,
                                                    gain=gain, subpix=1)
    return flux, err


def _aperture_flux(sub, x, y, radius, error, psf, tx, ty):
    """photutils circular aperture photometry, corrected by the true PSF's enclosed fraction."""
    from photutils.aperture import CircularAperture, aperture_photometry

    from asidfe_phot.datasets import render_psf_stamps

    tbl = aperture_photometry(sub, CircularAperture(np.column_stack([x, y]), radius),
                              error=error)
    stamps, x0, y0 = render_psf_stamps(psf, tx, ty)
    h = stamps.shape[1] // 2
    frac = np.array([aperture_photometry(st, CircularAperture((xi - x0i + h, yi - y0i + h),
                                                              radius))["aperture_sum"][0]
                     for st, xi, yi, x0i, y0i in zip(stamps, x, y, x0, y0)])
    return np.asarray(tbl["aperture_sum"]) / frac, np.asarray(tbl["aperture_sum_err"]) / frac


def measure_frames(model, data, n_frames=60, log=print):
    """Per-source results of every method on the first ``n_frames`` test frames."""
    import warnings

    from photutils.utils import calc_total_error

    from asidfe_phot import MLPhotometry
    from asidfe_phot.exceptions import AsidfePhotWarning

    data = Path(data)
    index = json.loads((data / "index.json").read_text())
    seeds = simulate_mod.frame_seeds(index["seed"], index["n_frames"])
    test_frames = [f for f in range(index["n_frames"]) if simulate_mod.split_of(f) == "test"]
    phot = MLPhotometry(model)
    rows = []
    for k, frame_id in enumerate(test_frames[:n_frames]):
        _, meta, frame = simulate_mod.simulate_frame(
            frame_id, int(seeds[frame_id]), index["preset"], tuple(index["families"]),
            tuple(index["frame_shape"]), return_frame=True)
        if len(meta) == 0:
            continue
        cond = frame["cond"]
        det = frame["detections"]
        match = frame["match"]
        # Stored rows are the matched detections whose stamps lie inside the frame.
        det_x = meta["x_frame"] - meta["true_dx"] + meta["det_dx"]
        det_y = meta["y_frame"] - meta["true_dy"] + meta["det_dy"]
        d2 = (det["x"][None, :] - det_x[:, None]) ** 2 + (det["y"][None, :] - det_y[:, None]) ** 2
        obj = np.argmin(d2, axis=1)
        star = match[obj]
        image, bkg, rms = frame["image"], frame["background"], frame["rms"]
        sub = image - bkg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AsidfePhotWarning)
            ml = phot(image, init_params=Table({"x": det["x"][obj], "y": det["y"][obj]}),
                      gain=cond["gain"])
        sep_flux, sep_err = _sep_flux_auto(sub.astype(np.float64), det[obj], rms, cond["gain"])
        psf = {key: (v[star] if np.ndim(v) else v) for key, v in frame["truth"]["psf"].items()}
        psf.pop("truncation", None)
        tx, ty = frame["truth"]["x"][star], frame["truth"]["y"][star]
        error = calc_total_error(sub, rms, cond["gain"])
        ap_flux, ap_err = _aperture_flux(sub, det["x"][obj], det["y"][obj],
                                         1.5 * cond["fwhm0"], error, psf, tx, ty)
        rows.append(Table({
            "frame": meta["frame"], "snr": meta["snr"], "contamination": meta["contamination"],
            "fwhm": meta["fwhm"], "family": meta["family"],
            "x_true": tx, "y_true": ty, "flux_true": frame["truth"]["flux"][star],
            "x_init": det["x"][obj], "y_init": det["y"][obj],
            "crlb_flux": meta["crlb_flux"], "crlb_x": meta["crlb_x"], "crlb_y": meta["crlb_y"],
            "x_ml": np.asarray(ml["x_fit"]), "y_ml": np.asarray(ml["y_fit"]),
            "flux_ml": np.asarray(ml["flux_fit"]), "x_err_ml": np.asarray(ml["x_err"]),
            "y_err_ml": np.asarray(ml["y_err"]), "flux_err_ml": np.asarray(ml["flux_err"]),
            "flags_ml": np.asarray(ml["flags"]),
            "flux_sep": sep_flux, "flux_err_sep": sep_err,
            "flux_aper": ap_flux, "flux_err_aper": ap_err,
        }))
        if (k + 1) % 10 == 0:
            log(f"evaluated {k + 1} frames")
    from astropy.table import vstack

    return vstack(rows)


def bin_metrics(results, bins=SNR_BINS):
    """Per S/N bin: MARE of each method, position errors, z-score std and coverage, error/CRLB."""
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        r = results[(results["snr"] >= lo) & (results["snr"] < hi)]
        row = {"snr_lo": lo, "snr_hi": hi, "n": len(r)}
        if len(r) == 0:
            out.append(row)
            continue
        ft = r["flux_true"]
        for m in ("ml", "sep", "aper"):
            row[f"flux_mare_{m}"] = float(np.nanmean(np.abs(r[f"flux_{m}"] - ft) / ft))
        for c in ("x", "y"):
            res = r[f"{c}_ml"] - r[f"{c}_true"]
            row[f"{c}_mae_ml"] = float(np.nanmean(np.abs(res)))
            row[f"{c}_mae_init"] = float(np.nanmean(np.abs(r[f"{c}_init"] - r[f"{c}_true"])))
            z = res / r[f"{c}_err_ml"]
            row[f"{c}_zstd_ml"] = float(np.nanstd(z))
            row[f"{c}_cov68_ml"] = float(np.nanmean(np.abs(z) < 1))
            row[f"{c}_rms_over_crlb_ml"] = float(np.sqrt(np.nanmean(res**2))
                                                 / np.sqrt(np.nanmean(r[f"crlb_{c}"] ** 2)))
        for m in ("ml", "sep", "aper"):
            z = (r[f"flux_{m}"] - ft) / r[f"flux_err_{m}"]
            row[f"flux_zstd_{m}"] = float(np.nanstd(z))
            row[f"flux_cov68_{m}"] = float(np.nanmean(np.abs(z) < 1))
        res = r["flux_ml"] - ft
        row["flux_rms_over_crlb_ml"] = float(np.sqrt(np.nanmean(res**2))
                                             / np.sqrt(np.nanmean(r["crlb_flux"] ** 2)))
        row["flagged_fraction_ml"] = float(np.mean(r["flags_ml"] != 0))
        out.append(row)
    # Empty bins get NaN in every metric column.
    keys = max(out, key=len).keys()
    return QTable(rows=[{k: row.get(k, np.nan) for k in keys} for row in out])


#: Columns of the docs table: (column, heading, decimals).
RST_COLUMNS = (
    ("n", "N", 0), ("flux_mare_ml", "MARE ML", 4), ("flux_mare_sep", "MARE sep", 4),
    ("flux_mare_aper", "MARE aper", 4), ("flux_zstd_ml", "flux z-std", 2),
    ("flux_cov68_ml", "flux cov68", 2), ("x_zstd_ml", "x z-std", 2), ("y_zstd_ml", "y z-std", 2),
    ("x_cov68_ml", "x cov68", 2), ("x_mae_ml", "x MAE", 4), ("x_mae_init", "x MAE input", 4),
    ("flux_rms_over_crlb_ml", "flux/CRLB", 2), ("x_rms_over_crlb_ml", "x/CRLB", 2),
)


def write_metrics_rst(metrics, path):
    """The per-bin metrics as an RST table for the docs."""
    tbl = Table()
    tbl["S/N"] = [f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">{lo:g}"
                  for lo, hi in zip(metrics["snr_lo"], metrics["snr_hi"])]
    for col, head, dec in RST_COLUMNS:
        if col in metrics.colnames:
            tbl[head] = [f"{v:.{dec}f}" if np.isfinite(v) else "-" for v in metrics[col]]
    tbl.write(path, format="ascii.rst", overwrite=True)


def plot_metrics(metrics, path):
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    centre = np.sqrt(metrics["snr_lo"] * np.where(np.isfinite(metrics["snr_hi"]),
                                                  metrics["snr_hi"], 3 * metrics["snr_lo"]))
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    labels = {"ml": "asidfe_phot TS-MVE", "sep": "sep FLUX_AUTO", "aper": "photutils aperture"}
    for m, lab in labels.items():
        axes[0, 0].loglog(centre, metrics[f"flux_mare_{m}"], "o-", label=lab)
        axes[0, 1].semilogx(centre, metrics[f"flux_zstd_{m}"], "o-", label=lab)
    axes[0, 0].set(xlabel="S/N", ylabel="flux MARE")
    # Log scale: classical errors that ignore neighbours are off by orders of magnitude.
    axes[0, 1].set(xlabel="S/N", ylabel="std of flux z-score", yscale="log")
    axes[0, 1].axhline(1, color="k", lw=0.5)
    for c in ("x", "y"):
        axes[1, 0].semilogx(centre, metrics[f"{c}_zstd_ml"], "o-", label=f"{c} TS-MVE")
        axes[1, 1].semilogx(centre, metrics[f"{c}_rms_over_crlb_ml"], "o-", label=f"{c}")
    axes[1, 1].semilogx(centre, metrics["flux_rms_over_crlb_ml"], "o-", label="flux")
    axes[1, 0].axhline(1, color="k", lw=0.5)
    axes[1, 1].axhline(1, color="k", lw=0.5)
    axes[1, 0].set(xlabel="S/N", ylabel="std of position z-score", ylim=(0, 3))
    axes[1, 1].set(xlabel="S/N", ylabel="rms error / Cramér–Rao bound", yscale="log")
    for ax in axes.flat:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_model(model, data, n_frames=60, out=None, log=print):
    """Measure, bin, write ``results.ecsv``, ``metrics.ecsv``, ``metrics.png``; return the bins."""
    results = measure_frames(model, data, n_frames, log)
    metrics = bin_metrics(results)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        results.write(out / "results.ecsv", overwrite=True)
        metrics.write(out / "metrics.ecsv", overwrite=True)
        write_metrics_rst(metrics, out / "metrics.rst")
        plot_metrics(metrics, out / "metrics.png")
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v)
             for k, v in dict(zip(metrics.colnames, row)).items()}
            for row in metrics.as_array().tolist()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--n-frames", type=int, default=60)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    metrics = evaluate_model(args.model, args.data, args.n_frames, args.out)
    print(json.dumps(metrics, indent=1, default=float))


if __name__ == "__main__":
    main()
