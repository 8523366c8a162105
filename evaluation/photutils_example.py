"""
Data made by others: photutils' own ``make_psf_model_image`` example fields.

    python -m evaluation.photutils_example [--model NAME] [--fields 20] [--fwhm 2.7]

Fields of Gaussian-PRF stars as photutils' PSF user guide makes them
(``make_psf_model_image(shape, CircularGaussianPRF(fwhm=...), n_sources,
flux=(500, 700) ...)``, here with fluxes spread over S/N 5-2000 so that every
bin is populated), Gaussian sky noise, positions from the truth plus 0.3 px.
Prints per S/N bin (optimal, known PSF) the flux MARE, the position MAE and the
flux and x z-score std of MLPhotometry without a PSF, with the true PSF as
``psf_model`` and with ``psf_model="auto"``, and of photutils ``PSFPhotometry``
with the true PSF. Not a test: a measurement.
"""

import argparse
import warnings

import numpy as np
from astropy.stats import gaussian_fwhm_to_sigma
from astropy.table import Table, vstack

BINS = (5, 10, 20, 50, 100, 300, 1000, 3000)


def _field(seed, fwhm, shape=(256, 256), n=60, noise=5.0):
    from photutils.psf import CircularGaussianPRF, make_psf_model_image

    rng = np.random.default_rng(seed)
    model = CircularGaussianPRF(fwhm=fwhm)
    # Optimal S/N of a Gaussian with background-limited noise: F / (noise * sqrt(4 pi s^2)).
    sigma = fwhm * gaussian_fwhm_to_sigma
    snr = np.exp(rng.uniform(np.log(5), np.log(3000), n))
    flux = snr * noise * np.sqrt(4 * np.pi * sigma**2)
    image, params = make_psf_model_image(shape, model, n, model_shape=(25, 25),
                                         flux=(1, 2), min_separation=8, border_size=20,
                                         seed=seed)
    # Re-render with the spread fluxes (photutils draws them uniformly in a range).
    from photutils.datasets import make_model_image

    params["flux"] = flux[:len(params)]
    image = make_model_image(shape, model, params, model_shape=(25, 25))
    image = image + rng.normal(0, noise, shape)
    return image, params, model, noise, snr[:len(params)]


def _measure(image, params, model, noise, seed):
    from photutils.psf import PSFPhotometry

    from asidfe_phot import MLPhotometry

    rng = np.random.default_rng(seed + 1000)
    init = Table({"x": params["x_0"] + rng.normal(0, 0.3, len(params)),
                  "y": params["y_0"] + rng.normal(0, 0.3, len(params))})
    error = np.full(image.shape, noise)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, psf in (("none", None), ("true", model), ("auto", "auto")):
            t = MLPhotometry(model=_measure.model, psf_model=psf)(image, init_params=init,
                                                            error=error, background=0)
            out[label] = t
        fit = PSFPhotometry(model, (7, 7), aperture_radius=4)(
            image, error=error, init_params=Table({"x": init["x"], "y": init["y"]}))
    fit.sort("id")
    out["photutils"] = fit
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--model", default=None)
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--fwhm", type=float, default=2.7)
    args = parser.parse_args(argv)
    _measure.model = args.model
    rows = []
    for seed in range(args.fields):
        image, params, model, noise, snr = _field(seed, args.fwhm)
        res = _measure(image, params, model, noise, seed)
        cols = {"snr": snr, "flux_true": np.asarray(params["flux"]),
                "x_true": np.asarray(params["x_0"]), "y_true": np.asarray(params["y_0"])}
        for label, t in res.items():
            for c in ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err"):
                cols[f"{c}_{label}"] = np.asarray(t[c], dtype=float)
        rows.append(Table(cols))
    tbl = vstack(rows)
    labels = ("none", "true", "auto", "photutils")
    print(f"{len(tbl)} stars in {args.fields} fields, Gaussian PRF FWHM {args.fwhm} px")
    print("S/N        N   " + "  ".join(f"{lab:>22s}" for lab in labels))
    print("                " + "  ".join(f"{'MARE  pos   zf   zx':>22s}" for _ in labels))
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        b = tbl[(tbl["snr"] >= lo) & (tbl["snr"] < hi)]
        line = f"{lo:>4g}-{hi:<5g} {len(b):4d}  "
        for lab in labels:
            r = b[f"flux_fit_{lab}"] / b["flux_true"] - 1
            dx = b[f"x_fit_{lab}"] - b["x_true"]
            zf = (b[f"flux_fit_{lab}"] - b["flux_true"]) / b[f"flux_err_{lab}"]
            zx = dx / b[f"x_err_{lab}"]
            line += (f"  {np.nanmean(np.abs(r)):.3f} {np.nanmean(np.abs(dx)):.3f} "
                     f"{np.nanstd(zf):4.2f} {np.nanstd(zx):4.2f}")
        print(line)


if __name__ == "__main__":
    main()
