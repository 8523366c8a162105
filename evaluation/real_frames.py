"""
MLPhotometry on real images against SourceExtractor and DAOPHOT (paper Sect. 4.2, Tables 1-2).

    python -m evaluation.real_frames --out runs/real_eval [--model models/asidfe_tsmve_v5]

Real images have no truths, so, as Stoppa et al. (2023) do for MeerLICHT and
ZTF, the model is compared with established software: Pearson correlation of
x, y and flux, and the ConTEST consistency test
(`asidfe_phot.consistency.contest`) on the differences given both sets of
uncertainties. Frames:

1. ESO NTT/EMMI R band ``galaxies.fits`` (1024x1024) with its SourceExtractor +
   PSFEx PSF-fit catalogue and its IRAF DAOPHOT ALLSTAR catalogue (shipped,
   1-based positions). Stars: ``FLAGS == 0``, raw peak below 50000 ADU
   (SourceExtractor's SATUR_LEVEL for this frame), a successful PSF fit,
   matched to DAOPHOT within 1 px, and point-like. Point-like is
   ``|SPREAD_MODEL| < 0.003`` by default (``--ntt-stars spread_model``):
   in the shipped rerun catalogue CLASS_STAR is unusable (only 13 objects
   have CLASS_STAR > 0.9, mostly faint objects sharper than the PSF, 2 of
   them in the DAOPHOT list, while the 68 SPREAD_MODEL point sources all
   have CLASS_STAR < 0.85); ``--ntt-stars class_star`` applies the
   CLASS_STAR > 0.9 rule anyway. Pairs: ASID-FE vs SExtractor PSF fit,
   ASID-FE vs DAOPHOT, and SExtractor vs DAOPHOT as the reference pair (how
   well two classical codes agree).
2. A frame of ``shared/real/misc`` (``--frame2``, default ``m51``: KPNO B band,
   512x512, ~15 isolated stars around M51, no GAIN keyword; ``eyuma``, a
   0.4 m r-band frame, has more stars but an undersampled PSF (FWHM ~1.2 px)
   on which the PSFEx fit fails, and a bias pedestal that makes the
   sky / rms^2 gain meaningless):
   SourceExtractor + PSFEx are run here (`evaluation.reference_tools`); stars
   with CLASS_STAR > 0.9, FLAGS == 0 (saturated stars excluded), PSF fit ok.
   Pairs: ASID-FE vs SExtractor PSF fit, ASID-FE vs SExtractor
   FLUX_AUTO/XWIN, and SExtractor PSF vs AUTO/WIN as the reference pair.

MLPhotometry runs with the defaults an astronomer would use: the catalogue
positions as ``init_params``, ``gain`` from the header's GAIN when present
(otherwise MLPhotometry derives it from the unsubtracted sky), ``saturation``
from SATURATE when present, the default model.

Positions: the Pearson r of absolute x over a 1024 px frame is 1.000 for any
code, so r is computed on the sub-pixel offsets from the common input
position (x - x_init), as is meaningful for stamp-based predictions; the
absolute-coordinate r is in the ECSV summary too. DAOPHOT gives no position
errors, so ConTEST on its positions uses the other code's errors alone.

Outputs in ``--out``: ``<frame>_stars.ecsv`` (per star, all codes),
``<frame>_summary.ecsv`` (per pair and quantity: n, r, ConTEST t and p,
median offset), ``real_tables.rst`` (paper Tables 1-2 layout),
``<frame>_comparison.png`` (scatter + standardised differences) and
``<frame>_calibration.png`` (`asidfe_phot.visualization.plot_calibration` of
ASID-FE against the SExtractor PSF fit, whose errors are added).
"""

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from astropy.table import QTable, Table
from scipy import stats

from asidfe_phot.consistency import contest
from evaluation import real_data_dir

REAL = real_data_dir()
QUANTITIES = ("x", "y", "flux")
MATCH_RADIUS = 1.0


# --- reading the shipped catalogues -------------------------------------------------------

def read_sextractor_catalogue(path):
    """A SourceExtractor ASCII_HEAD catalogue with 0-based positions."""
    from evaluation.reference_tools import _read_ascii_catalogue

    return _read_ascii_catalogue(path)


def read_daophot_catalogue(path, zeropoint=25.0):
    """IRAF DAOPHOT ALLSTAR text (ID XCENTER YCENTER MAG MERR MSKY CHI SHARPNESS), 0-based."""
    tbl = Table.read(path, format="ascii.no_header",
                     names=("ID", "XCENTER", "YCENTER", "MAG", "MERR", "MSKY", "CHI", "SHARPNESS"))
    tbl["x"] = np.asarray(tbl["XCENTER"], dtype=np.float64) - 1.0
    tbl["y"] = np.asarray(tbl["YCENTER"], dtype=np.float64) - 1.0
    tbl["flux"] = 10 ** (-0.4 * (np.asarray(tbl["MAG"], dtype=np.float64) - zeropoint))
    tbl["flux_err"] = tbl["flux"] * np.asarray(tbl["MERR"], dtype=np.float64) * np.log(10) / 2.5
    return tbl


def _nearest(x, y, tx, ty):
    d = np.hypot(np.asarray(x)[:, None] - np.asarray(tx)[None], np.asarray(y)[:, None]
                 - np.asarray(ty)[None])
    j = d.argmin(axis=1)
    return j, d[np.arange(len(j)), j]


# --- measuring ------------------------------------------------------------------------------

def run_mlphotometry(model, data, header, x, y):
    """MLPhotometry with header gain / saturation (if any) at positions x, y."""
    from asidfe_phot import MLPhotometry
    from asidfe_phot.exceptions import AsidfePhotWarning
    from asidfe_phot.io import header_float

    gain = header_float(header, "GAIN")
    saturation = header_float(header, "SATURATE")
    phot = MLPhotometry(model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AsidfePhotWarning)
        tbl = phot(data, init_params=Table({"x": x, "y": y}), gain=gain, saturation=saturation)
    notes = [str(w.message) for w in caught]
    return tbl, notes


def _asidfe_and_sextractor_psf(model, data, header, stars, log):
    """MLPhotometry at the catalogue positions, and the SourceExtractor PSF-fit values."""
    x_init = np.asarray(stars["X_IMAGE"], dtype=np.float64)
    y_init = np.asarray(stars["Y_IMAGE"], dtype=np.float64)
    ml, notes = run_mlphotometry(model, data, header, x_init, y_init)
    for note in notes:
        log(f"  MLPhotometry warning: {note}")
    methods = {
        "ASID-FE": _method(ml["x_fit"], ml["x_err"], ml["y_fit"], ml["y_err"],
                           np.asarray(ml["flux_fit"]), np.asarray(ml["flux_err"])),
        "SExtractor PSF": _method(stars["XPSF_IMAGE"], np.sqrt(stars["ERRX2PSF_IMAGE"]),
                                  stars["YPSF_IMAGE"], np.sqrt(stars["ERRY2PSF_IMAGE"]),
                                  stars["FLUX_PSF"], stars["FLUXERR_PSF"]),
    }
    return ml, methods


def _method(x, xe, y, ye, f, fe):
    as_arr = lambda v: None if v is None else np.asarray(v, dtype=np.float64)  # noqa: E731
    return {"x": as_arr(x), "x_err": as_arr(xe), "y": as_arr(y), "y_err": as_arr(ye),
            "flux": as_arr(f), "flux_err": as_arr(fe)}


def compare(methods, pairs, x_init, y_init, n_sim=10000, seed=1):
    """
    Pearson r and ConTEST for each pair of methods and each quantity.

    Parameters
    ----------
    methods : dict
        name -> dict of arrays ``x, x_err, y, y_err, flux, flux_err`` (an
        error may be None: not given by that code).
    pairs : list of (str, str)
    x_init, y_init : arrays
        The common input positions (offsets are taken from them).

    Returns
    -------
    `~astropy.table.QTable`
        One row per (pair, quantity).
    """
    rows = []
    for a, b in pairs:
        ma, mb = methods[a], methods[b]
        for q in QUANTITIES:
            va, vb = ma[q], mb[q]
            ea, eb = ma[f"{q}_err"], mb[f"{q}_err"]
            ok = np.isfinite(va) & np.isfinite(vb)
            for e in (ea, eb):
                if e is not None:
                    ok &= np.isfinite(e) & (e > 0)
            row = {"pair": f"{a} vs {b}", "method": a, "reference": b, "quantity": q,
                   "n": int(ok.sum())}
            if q == "flux":
                r = stats.pearsonr(va[ok], vb[ok]).statistic
                row["pearson_r"] = float(r)
                row["pearson_r_log"] = float(stats.pearsonr(np.log10(np.clip(va[ok], 1e-3, None)),
                                                            np.log10(np.clip(vb[ok], 1e-3,
                                                                             None))).statistic)
                row["pearson_r_absolute"] = row["pearson_r"]
                row["median_offset"] = float(np.median(va[ok] / vb[ok]) - 1.0)
                row["offset_kind"] = "median ratio - 1"
            else:
                init = x_init if q == "x" else y_init
                row["pearson_r"] = float(stats.pearsonr(va[ok] - init[ok],
                                                        vb[ok] - init[ok]).statistic)
                row["pearson_r_log"] = np.nan
                row["pearson_r_absolute"] = float(stats.pearsonr(va[ok], vb[ok]).statistic)
                row["median_offset"] = float(np.median(va[ok] - vb[ok]))
                row["offset_kind"] = "median difference (px)"
            res = contest(va[ok], vb[ok], ea[ok] if ea is not None else np.zeros(ok.sum()),
                          None if eb is None else eb[ok], n_sim=n_sim, seed=seed)
            row.update({"contest_t": res.statistic, "contest_p": res.pvalue,
                        "contest_p_exact": res.exact_pvalue, "consistency": res.verdict,
                        "errors_used": ("both" if ea is not None and eb is not None
                                        else f"{a if ea is not None else b} only")})
            if ea is not None:
                err = ea[ok] if eb is None else np.hypot(ea[ok], eb[ok])
                z = (va[ok] - vb[ok]) / err
                row["z_median"] = float(np.median(z))
                row["z_std"] = float(np.std(z))
                row["z_mad_std"] = float(1.4826 * np.median(np.abs(z - np.median(z))))
            rows.append(row)
    return QTable(rows=rows)


# --- frames ---------------------------------------------------------------------------------

def ntt_frame(model, log=print, selection="spread_model", max_peak=5.0e4):
    """ESO NTT galaxies.fits: ASID-FE vs the shipped SExtractor PSF-fit and DAOPHOT catalogues."""
    from asidfe_phot.io import read_image

    root = REAL / "eso_ntt_emmi"
    data, header, _ = read_image(root / "galaxies.fits")
    sex = read_sextractor_catalogue(root / "galaxies_sextractor_psffit_rerun.cat")
    dao = read_daophot_catalogue(root / "galaxies_iraf_daophot_allstar_rerun.txt")
    stars = select_stars(sex, selection)
    # Unsaturated: peak (raw, 5x5 around the position) below SExtractor's SATUR_LEVEL.
    xi = np.rint(stars["X_IMAGE"]).astype(int)
    yi = np.rint(stars["Y_IMAGE"]).astype(int)
    peak = np.array([data[max(b - 2, 0):b + 3, max(a - 2, 0):a + 3].max()
                     for a, b in zip(xi, yi)])
    stars = stars[peak < max_peak]
    j, sep = _nearest(stars["XPSF_IMAGE"], stars["YPSF_IMAGE"], dao["x"], dao["y"])
    matched = sep < MATCH_RADIUS
    log(f"NTT: {len(sex)} SExtractor objects, {len(stars)} stars ({selection}, FLAGS == 0, "
        f"peak < {max_peak:g}, PSF fit ok), {int(matched.sum())} matched to DAOPHOT within "
        f"{MATCH_RADIUS} px")
    stars, dao = stars[matched], dao[j[matched]]
    ml, methods = _asidfe_and_sextractor_psf(model, data, header, stars, log)
    methods.update({
        "DAOPHOT": _method(dao["x"], None, dao["y"], None, dao["flux"], dao["flux_err"]),
    })
    pairs = [("ASID-FE", "SExtractor PSF"), ("ASID-FE", "DAOPHOT"), ("SExtractor PSF", "DAOPHOT")]
    info = {"frame": "eso_ntt_emmi/galaxies.fits", "band": "R", "telescope": "ESO NTT + EMMI",
            "gain_used": str(ml.meta.get("gain")), "star_selection": selection,
            "n_stars": len(stars), "ml_flagged": int(np.count_nonzero(ml["flags"]))}
    return methods, pairs, np.asarray(ml["x_init"]), np.asarray(ml["y_init"]), ml, info


#: Second real frames (misc/): file, SourceExtractor seeing guess (px), saturation (ADU).
MISC_FRAMES = {
    "eyuma": {"file": "msum_0p4m_r_eyuma_256x256.fit.gz", "seeing": 2.0, "saturation": 6.0e4,
              "band": "r", "telescope": "0.4 m CCD, 90 s",
              "title": "0.4 m r band, msum_0p4m_r_eyuma"},
    "m51": {"file": "iraf_devpix_m51_kpno_512x512.fits", "seeing": 3.0, "saturation": 1.9e4,
            "band": "B", "telescope": "KPNO, 600 s", "title": "KPNO B band, M51 (IRAF dev image)"},
    "ukidss": {"file": "ukidss_wfcam_K_taurus_300x300.fits", "seeing": 3.8, "saturation": 5e4,
               "band": "K", "telescope": "UKIRT + WFCAM",
               "title": "UKIRT/WFCAM K band, ukidss_wfcam_K_taurus"},
}


def select_stars(cat, selection):
    """
    Point sources of a SourceExtractor catalogue with a successful PSF fit.

    ``'class_star'``: ``CLASS_STAR > 0.9`` (the issue's rule); ``'spread_model'``:
    ``|SPREAD_MODEL| < 0.003`` (the PSFEx-based classifier). Both with
    ``FLAGS == 0`` (not saturated, not blended, not truncated) and positive
    ``FLUX_PSF`` and PSF position variances.
    """
    ok = ((cat["FLAGS"] == 0) & (cat["FLUX_PSF"] > 0) & (cat["ERRX2PSF_IMAGE"] > 0)
          & (cat["ERRY2PSF_IMAGE"] > 0) & (cat["FLUXERR_PSF"] > 0))
    if selection == "class_star":
        ok &= cat["CLASS_STAR"] > 0.9
    elif selection == "spread_model":
        ok &= np.abs(cat["SPREAD_MODEL"]) < 0.003
    else:
        msg = f"selection must be 'class_star' or 'spread_model', got {selection!r}"
        raise ValueError(msg)
    return cat[ok]


def misc_frame(model, name="eyuma", log=print, workdir=None, selection="class_star"):
    """A misc/ frame: SourceExtractor + PSFEx run here; ASID-FE at its star positions."""
    from asidfe_phot.io import header_float, read_image
    from evaluation.reference_tools import source_extractor_psf_fit

    spec = MISC_FRAMES[name]
    data, header, _ = read_image(REAL / "misc" / spec["file"])
    gain = header_float(header, "GAIN")
    config = {"GAIN": gain or 0.0, "DETECT_THRESH": 3.0, "BACK_SIZE": 32,
              "SATUR_LEVEL": header_float(header, "SATURATE") or spec["saturation"]}
    sex = source_extractor_psf_fit(data, config=config, header=header,
                                   seeing_fwhm=spec["seeing"],
                                   psfex_config={"PSFVAR_DEGREES": 0, "SAMPLE_MINSN": 20},
                                   workdir=workdir)
    stars = select_stars(sex, selection)
    stars = stars[(stars["ERRX2WIN_IMAGE"] > 0) & (stars["ERRY2WIN_IMAGE"] > 0)
                  & (stars["FLUXERR_AUTO"] > 0)]
    log(f"{name}: {len(sex)} SExtractor objects (PSFEx {sex.meta['psf_model']}), {len(stars)} "
        f"stars ({selection}, FLAGS == 0, PSF fit ok)")
    ml, methods = _asidfe_and_sextractor_psf(model, data, header, stars, log)
    methods.update({
        "SExtractor AUTO/WIN": _method(stars["XWIN_IMAGE"], np.sqrt(stars["ERRX2WIN_IMAGE"]),
                                       stars["YWIN_IMAGE"], np.sqrt(stars["ERRY2WIN_IMAGE"]),
                                       stars["FLUX_AUTO"], stars["FLUXERR_AUTO"]),
    })
    pairs = [("ASID-FE", "SExtractor PSF"), ("ASID-FE", "SExtractor AUTO/WIN"),
             ("SExtractor PSF", "SExtractor AUTO/WIN")]
    info = {"frame": f"misc/{spec['file']}", "band": spec["band"],
            "telescope": spec["telescope"], "gain_used": str(ml.meta.get("gain")),
            "star_selection": selection, "n_stars": len(stars),
            "ml_flagged": int(np.count_nonzero(ml["flags"])),
            "psfex": {k: (v.item() if hasattr(v, "item") else v)
                      for k, v in sex.meta["psf_model"].items()}}
    return methods, pairs, np.asarray(ml["x_init"]), np.asarray(ml["y_init"]), ml, info


# --- outputs --------------------------------------------------------------------------------

def star_table(methods, x_init, y_init, ml):
    tbl = QTable({"x_init": x_init, "y_init": y_init, "flags_ml": np.asarray(ml["flags"])})
    for name, m in methods.items():
        key = name.lower().replace(" ", "_").replace("/", "_").replace("-", "")
        for col, values in m.items():
            if values is not None:
                tbl[f"{col}_{key}"] = values
    return tbl


def rst_tables(frames):
    """Paper Tables 1-2 layout: per pair, Pearson r of x, y, flux and the ConTEST verdicts."""
    lines = []
    for title, summary, info in frames:
        lines += [title, "~" * len(title), "",
                  f"{info['n_stars']} stars; MLPhotometry gain: {info['gain_used']}; model "
                  f"{info.get('model', '?')}. Pearson r of x and y is on the offsets from the "
                  "common input position; Consistency is ConTEST at the 5% level for x / y / "
                  "flux.", ""]
        header = ("Method", "x", "y", "flux", "Consistency (x / y / flux)",
                  "ConTEST t (x / y / flux)")
        body = []
        for pair in dict.fromkeys(summary["pair"]):
            rows = {r["quantity"]: r for r in summary[summary["pair"] == pair]}
            body.append((pair, *(f"{rows[q]['pearson_r']:.3f}" for q in QUANTITIES),
                         " / ".join(rows[q]["consistency"] for q in QUANTITIES),
                         " / ".join(f"{rows[q]['contest_t']:.2f}" for q in QUANTITIES)))
        widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
        rule = "  ".join("=" * w for w in widths)
        lines += [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)), rule]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
                  for row in body]
        lines += [rule, ""]
    return "\n".join(lines) + "\n"


def plot_comparison(methods, pairs, x_init, y_init, title, path):
    import matplotlib

    matplotlib.use("agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8))
    axes = fig.subplots(2, 3)
    grid = np.linspace(-5, 5, 200)
    for k, q in enumerate(QUANTITIES):
        ax, axz = axes[0, k], axes[1, k]
        for c, (a, b) in enumerate(pairs):
            va, vb = methods[a][q], methods[b][q]
            if q != "flux":
                init = x_init if q == "x" else y_init
                va, vb = va - init, vb - init
            ax.scatter(vb, va, s=8, color=f"C{c}", alpha=0.7, label=f"{a} vs {b}")
            ea, eb = methods[a][f"{q}_err"], methods[b][f"{q}_err"]
            err = ea if eb is None else (eb if ea is None else np.hypot(ea, eb))
            if err is not None:
                z = (methods[a][q] - methods[b][q]) / err
                z = z[np.isfinite(z)]
                axz.hist(np.clip(z, -5, 5), bins=np.linspace(-5, 5, 31), density=True,
                         histtype="step", color=f"C{c}", lw=1.5,
                         label=f"{a} - {b}: std {np.std(z):.2f}")
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        if q == "flux":
            ax.set(xscale="log", yscale="log")
        ax.set(xlabel=f"reference {q}" + (" - x_init" if q == "x" else
                                          " - y_init" if q == "y" else ""),
               ylabel=f"method {q}")
        ax.legend(fontsize=6)
        axz.plot(grid, stats.norm.pdf(grid), "k--", lw=0.8, label="N(0,1)")
        axz.set(xlabel=f"({q}_method - {q}_ref) / combined sigma", ylabel="density")
        axz.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_calibration_vs(stars, key_ml, key_ref, title, path):
    import matplotlib

    matplotlib.use("agg")
    from matplotlib.figure import Figure

    from asidfe_phot.visualization import plot_calibration

    tbl = Table(stars)
    tbl["flags"] = tbl["flags_ml"]
    fig = plot_calibration(tbl, [f"{q}_{key_ml}" for q in QUANTITIES],
                           [f"{q}_{key_ref}" for q in QUANTITIES],
                           [f"{q}_err_{key_ml}" for q in QUANTITIES],
                           truth_error_col=[f"{q}_err_{key_ref}" for q in QUANTITIES],
                           labels=list(QUANTITIES), fig=Figure(figsize=(10, 4.2)))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def evaluate(model=None, out="runs/real_eval", n_sim=10000, frame2="m51",
             ntt_selection="spread_model", frame2_selection="class_star", log=print):
    from asidfe_phot.models import load_model_card

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    card = load_model_card(model)
    model_name = f"{card['name']}_v{card['version']} (sha256 {card['sha256'][:12]})"
    frames = []
    results = {}
    for key, func, title in (
            ("ntt", lambda m, log: ntt_frame(m, log, selection=ntt_selection),
             "ESO NTT/EMMI R, galaxies.fits: ASID-FE vs SExtractor PSF fit and DAOPHOT ALLSTAR"),
            (frame2, lambda m, log: misc_frame(m, frame2, log, workdir=out / f"{frame2}_sextractor",
                                               selection=frame2_selection),
             f"{MISC_FRAMES[frame2]['title']}: ASID-FE vs SExtractor PSF fit and AUTO/WIN")):
        methods, pairs, x_init, y_init, ml, info = func(model, log)
        info["model"] = model_name
        summary = compare(methods, pairs, x_init, y_init, n_sim=n_sim)
        summary.meta.update(info)
        stars = star_table(methods, x_init, y_init, ml)
        stars.meta.update(info)
        stars.write(out / f"{key}_stars.ecsv", overwrite=True)
        summary.write(out / f"{key}_summary.ecsv", overwrite=True)
        plot_comparison(methods, pairs, x_init, y_init, f"{title}\nmodel {model_name}",
                        out / f"{key}_comparison.png")
        plot_calibration_vs(stars, "asidfe", "sextractor_psf",
                            f"{title}: ASID-FE z-scores against SExtractor PSF fit "
                            "(both errors)", out / f"{key}_calibration.png")
        frames.append((title, summary, info))
        results[key] = {"info": info, "summary": [
            {k: (v.item() if hasattr(v, "item") else v) for k, v in zip(summary.colnames, row)}
            for row in summary.iterrows()]}
    (out / "real_tables.rst").write_text(rst_tables(frames))
    (out / "real_summary.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or directory (default: shipped)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n-sim", type=int, default=10000, help="ConTEST simulations")
    parser.add_argument("--frame2", choices=sorted(MISC_FRAMES), default="m51",
                        help="second real frame, from shared/real/misc")
    parser.add_argument("--ntt-stars", choices=("spread_model", "class_star"),
                        default="spread_model",
                        help="star selection on galaxies.fits (see the module docstring)")
    parser.add_argument("--frame2-stars", choices=("spread_model", "class_star"),
                        default="class_star")
    args = parser.parse_args(argv)
    evaluate(args.model, args.out, args.n_sim, args.frame2, args.ntt_stars, args.frame2_stars)
    print((Path(args.out) / "real_tables.rst").read_text())


if __name__ == "__main__":
    main()
