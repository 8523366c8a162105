"""
Regenerate the tables and figures of the docs' Performance page.

    python -m evaluation.performance_page --model models/asidfe_tsmve_v5 [--data runs/v3/data] \
        [--n-frames 60] [--methods ml,sep,aper,sex,psfex,psf] [--skip-synthetic] [--skip-real] \
        [--evaluation runs/v3/evaluation] [--evaluation-broad runs/v3/evaluation_broad] \
        [--skip-broad] [--jobs 2] \
        [--generalisation runs/v3/heldout/generalisation.rst] [--compare runs/v3/compare]

Runs the synthetic evaluation (`evaluation.synthetic`) and the real-frame
comparison (`evaluation.real_frames`), then copies their tables and figures
into ``docs/_static/performance/``, and writes there:

- ``broad_metrics*.rst``, ``broad_metrics.png``: the same evaluation on the test
  frames of the card's ``training_data_broad`` recipe (PSF shapes beyond the
  generic ones), when the card has one;
- ``inject_metrics.rst``, ``inject_metrics.png``: artificial stars injected into
  the real frames (`evaluation.injection`) against a fit with the true PSF;
- ``summary.rst``: "where the model wins and where it loses", generated from
  the evaluation's ``wins.json`` and ``metrics.ecsv`` (`summary_rst`; with
  ``--skip-synthetic``, from the copies of the last evaluation);
- ``calibration.png``: `asidfe_phot.visualization.plot_calibration` of the
  ML x, y and flux on the evaluation's ``results.ecsv`` (S/N >= 3);
- ``generalisation.rst``: a copy of ``evaluation.generalisation``'s table
  (``--generalisation``), when that file exists;
- ``ensemble_comparison.rst``: the model's TS-MVE vs ensemble comparison
  (from its card);
- ``training_curves.png``: the model's training stages (its card's history)
  and ``compare_curves.png``: the comparison's runs (``--compare``, when
  present), `training.curves`.
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs" / "_static" / "performance"
#: z-std within this range counts as calibrated in the summary.
ZSTD_OK = (0.9, 1.1)


def comparison_rst(card):
    """The TS-MVE vs deep-ensemble validation scores as an RST table."""
    c = card.get("ensemble_comparison")
    if not c:
        return ("The equal-budget comparison with a deep ensemble of MVE networks is not in "
                "this model's card yet: ``training/pipeline.py`` runs it last, and rerunning "
                "the pipeline command resumes it.\n")
    lines = ["=================  ========  ========  ========",
             "model              MSE       MAE       NLL",
             "=================  ========  ========  ========"]
    for name, key in (("TS-MVE", "tsmve"), (f"ensemble of {c['budget']['members']} MVE",
                                             "ensemble")):
        s = c[key]
        lines.append(f"{name:<17}  {s['mse']:<8.4f}  {s['mae']:<8.4f}  {s['nll']:<8.4f}")
    for k, s in enumerate(c["members"]):
        lines.append(f"{'MVE member ' + str(k):<17}  {s['mse']:<8.4f}  {s['mae']:<8.4f}  "
                     f"{s['nll']:<8.4f}")
    lines.append(lines[0])
    b = c["budget"]
    return ("\n".join(lines) + "\n\n"
            f"Validation stamps: {c['validation_stamps']:,}. Budget: TS-MVE {b['tsmve_step1']:,} "
            f"stamps in step 1 and {b['tsmve_step2']:,} in step 2; each MVE member "
            f"{b['ensemble_member']:,} stamps of NLL training from scratch.\n")


def _fmt(v):
    """Two significant digits (three below 0.1 is too many for prose)."""
    v = float(v)
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:#.2g}".rstrip(".")


def _ratio(v):
    """A ratio, with a third digit where two would round it to 1.0 (hiding which side it is)."""
    text = _fmt(v)
    return f"{float(v):.3f}".rstrip("0") if text == "1.0" and float(v) != 1 else text


def _span(values):
    """'a-b' (or 'a' when equal) of the finite values, two significant digits."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not v.size:
        return "-"
    lo, hi = _fmt(v.min()), _fmt(v.max())
    return lo if lo == hi else f"{lo}-{hi}"


def _bin_list(labels):
    return ", ".join(labels)


def _comparison_bullet(bins, kind, m, what, ratio="ML / method"):
    """'<what> lower in k of n S/N bins (...), higher in ...' for one method, or None."""
    won, lost = [], []
    for b in bins:
        lower = b[f"{kind}_lower"].get(m)
        if lower is None:
            continue
        (won if lower else lost).append((b["snr"], b[f"{kind}_ratio"][m]))
    n = len(won) + len(lost)
    if not n:
        return None
    higher = "higher or equal" if any(r == 1 for _, r in lost) else "higher"
    parts = []
    if won:
        count = f"all {n}" if not lost else f"{len(won)} of {n}"
        bins_won = "" if not lost else f"{_bin_list(s for s, _ in won)}; "
        span = _span(r for _, r in won)
        if len(won) == 1:
            span = _ratio(won[0][1])
        parts.append(f"lower in {count} S/N bins ({bins_won}{ratio} {span})")
    if lost:
        count = f"all {n} S/N bins" if not won else f"{len(lost)}"
        parts.append(f"{higher} in {count} ({ratio} "
                     + ", ".join(f"{s}: {_ratio(r)}" for s, r in lost) + ")")
    return f"{what} " + ", ".join(parts)


def summary_rst(wins, metrics, model_name, labels=None):
    """
    "Where <model> wins and where it loses", in plain words, from the evaluation's numbers only.

    ``wins``: the evaluation's ``wins.json`` (dict); ``metrics``: its
    ``metrics.ecsv`` (all frames). One bullet per classical method (the S/N
    bins where ML's flux MARE, and position MAE, are lower or not, with the
    ratios ML / method), one for the input positions, one for the ML error
    calibration (z-std and cov68 ranges over the bins, and the bins with
    z-std within `ZSTD_OK`), and the bins won in sparse and crowded frames.
    """
    if labels is None:
        from evaluation.report import LABELS as labels
    sub = wins["subsets"]["all"]
    bins = [b for b in sub["bins"] if b["n"]]
    methods = []
    for b in bins:
        for m in list(b["flux_mare_lower"]) + list(b["pos_mae_lower"]):
            if m not in methods and m != "init":
                methods.append(m)
    lines = [f"**Where {model_name} wins and where it loses** ({sub['frames']} test frames, "
             f"{sub['sources']:,} sources; S/N bins as in the tables above; ML / method is the "
             "ratio of the errors, below 1 where ML is better):", ""]
    for m in methods:
        parts = [p for p in (_comparison_bullet(bins, "flux_mare", m, "flux MARE"),
                             _comparison_bullet(bins, "pos_mae", m, "position MAE"))
                 if p]
        if parts:
            lines.append(f"- *Against {labels.get(m, m)}.* ML's " + ". ML's ".join(parts) + ".")
    init = _comparison_bullet(bins, "pos_mae", "init", "position MAE", "ML / input")
    if init:
        lines.append("- *Against the input (detector) positions.* ML's " + init + ".")
    lines.append(_calibration_bullet(metrics))
    crowd = []
    for name in ("sparse", "crowded"):
        part = wins["subsets"].get(name)
        if not part or not part["sources"]:
            continue
        won = part["bins_won"]["flux_mare"]
        crowd.append(f"{name} frames ({part['frames']} frames, {part['sources']:,} sources): "
                     + ", ".join(f"{labels.get(m, m)} {v}" for m, v in won.items()))
    if crowd:
        threshold = wins.get("crowding_threshold")
        lines.append("- *Sparse and crowded frames* (crowded: at least "
                     f"{threshold:g} stars per FWHM²). S/N bins where ML's flux MARE is lower, "
                     "of those compared: " + "; ".join(crowd) + ".")
    return "\n".join(lines) + "\n"


def _calibration_bullet(metrics):
    """ML z-std and cov68 ranges of flux, x and y over the filled bins."""
    from evaluation.report import _snr_labels

    filled = np.asarray(metrics["n"]) > 0
    snr = [s for s, f in zip(_snr_labels(metrics), filled) if f]
    zparts, cparts = [], []
    for q in ("flux", "x", "y"):
        zcol, ccol = f"{q}_zstd_ml", f"{q}_cov68_ml"
        if zcol not in metrics.colnames:
            continue
        z = np.asarray(metrics[zcol], dtype=float)[filled]
        ok = [s for s, v in zip(snr, z) if ZSTD_OK[0] <= v <= ZSTD_OK[1]]
        n = int(np.isfinite(z).sum())
        lo, hi = ZSTD_OK
        if not ok:
            within = f"in none of the {n} bins within [{lo:g}, {hi:g}]"
        elif len(ok) == n:
            within = f"within [{lo:g}, {hi:g}] in all {n} bins"
        else:
            within = f"within [{lo:g}, {hi:g}] in {len(ok)} of {n} bins: {_bin_list(ok)}"
        zparts.append(f"{q} {_span(z)}, {within}")
        if ccol in metrics.colnames:
            cparts.append(f"{q} {_span(np.asarray(metrics[ccol], dtype=float)[filled])}")
    if not zparts:
        return "- *Calibration.* No ML error calibration in these results."
    text = ("- *Calibration.* Std of ML's z-scores over the S/N bins (1 for calibrated "
            "errors): " + "; ".join(zparts) + ".")
    if cparts:
        text += (" Fraction within 1 sigma (cov68, 0.68 for calibrated errors): "
                 + ", ".join(cparts) + ".")
    return text


def write_summary(wins_path, metrics_path, model_name, out):
    """`summary_rst` from the files; returns False (writing nothing) when one is missing."""
    from astropy.table import QTable

    if not (Path(wins_path).exists() and Path(metrics_path).exists()):
        return False
    wins = json.loads(Path(wins_path).read_text())
    if "ml" not in QTable.read(metrics_path).meta.get("methods", ["ml"]):
        return False
    Path(out).write_text(summary_rst(wins, QTable.read(metrics_path), model_name))
    return True


def write_calibration_figure(results_path, out, min_snr=3.0):
    """`~asidfe_phot.visualization.plot_calibration` of ML's x, y and flux; False without ML."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from astropy.table import Table

    from asidfe_phot.visualization import plot_calibration

    results = Table.read(results_path)
    if "flux_ml" not in results.colnames:
        return False
    results = results[np.asarray(results["snr"]) >= min_snr]
    fig = plot_calibration(results, ["x_ml", "y_ml", "flux_ml"], ["x_true", "y_true", "flux_true"],
                           ["x_err_ml", "y_err_ml", "flux_err_ml"], labels=["x", "y", "flux"])
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/asidfe_tsmve_v5")
    parser.add_argument("--data", default="runs/v3/data")
    parser.add_argument("--n-frames", type=int, default=60)
    parser.add_argument("--work", default="runs/performance")
    parser.add_argument("--methods", default="all",
                        help="methods of the synthetic evaluation (see evaluation.synthetic)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="frames of the synthetic evaluation measured in parallel")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--evaluation", default=None,
                        help="use this finished evaluation.synthetic output folder instead of "
                             "running the synthetic evaluation again")
    parser.add_argument("--evaluation-broad", default=None,
                        help="the same for the card's broad-PSF recipe")
    parser.add_argument("--skip-broad", action="store_true",
                        help="no evaluation on the broad-PSF recipe's test frames")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-speed", action="store_true",
                        help="keep speed.rst (evaluation/speed.py; run it on an idle machine)")
    parser.add_argument("--weights", default=None,
                        help="weights for the SmoothGrad figure (default: --model's own)")
    parser.add_argument("--compare", default="runs/v3/compare",
                        help="the pipeline's TS-MVE vs ensemble runs, for their curves")
    parser.add_argument("--generalisation", default="runs/v3/heldout/generalisation.rst",
                        help="evaluation.generalisation's table, copied when it exists")
    args = parser.parse_args(argv)
    work = Path(args.work)
    DOCS.mkdir(parents=True, exist_ok=True)
    if not args.skip_synthetic:
        from evaluation import synthetic as evaluate

        synthetic = Path(args.evaluation) if args.evaluation else work / "synthetic"
        if not args.evaluation:
            evaluate.evaluate_model(args.model, args.data, args.n_frames, out=synthetic,
                                    methods=args.methods, jobs=args.jobs)
        # metrics.{png,rst,ecsv}, the per-method tables metrics_{flux,position,calibration,
        # crlb,failures}.rst, the same for metrics_sparse* and metrics_crowded*, wins.json
        # and timings.json.
        for path in sorted(synthetic.iterdir()):
            if ((path.name.startswith("metrics") and path.suffix in (".png", ".rst", ".ecsv"))
                    or path.name in ("wins.json", "timings.json")):
                shutil.copy(path, DOCS / path.name)
        results = synthetic / "results.ecsv"
        if results.exists() and write_calibration_figure(results, DOCS / "calibration.png"):
            print("wrote calibration.png")
    card = json.loads((Path(args.model) / "config.json").read_text())
    if not args.skip_broad and card.get("training_data_broad"):
        from evaluation import synthetic as evaluate

        broad = Path(args.evaluation_broad) if args.evaluation_broad else work / "broad"
        if not args.evaluation_broad:
            evaluate.evaluate_model(args.model, card["training_data_broad"], args.n_frames,
                                    out=broad, methods=args.methods, jobs=args.jobs)
        for name in ("metrics.rst", "metrics.png", "metrics_flux.rst", "metrics_position.rst",
                     "metrics_calibration.rst", "metrics_crlb.rst", "metrics_failures.rst"):
            shutil.copy(broad / name, DOCS / f"broad_{name}")
    # From the copies, so that --skip-synthetic regenerates it from the last evaluation.
    if write_summary(DOCS / "wins.json", DOCS / "metrics.ecsv", Path(args.model).name,
                     DOCS / "summary.rst"):
        print("wrote summary.rst")
    else:
        print("summary.rst left as it is: no wins.json / metrics.ecsv with ML in "
              f"{DOCS}")
    generalisation = Path(args.generalisation)
    if generalisation.exists():
        shutil.copy(generalisation, DOCS / "generalisation.rst")
    else:
        print(f"{generalisation} not found: generalisation.rst left as it is")
    if not args.skip_real:
        from evaluation import injection as inject_real
        from evaluation import real_frames as evaluate_real

        evaluate_real.main(["--model", args.model, "--out", str(work / "real")])
        for path in (work / "real").iterdir():
            if path.suffix in (".png", ".rst") and not path.name.startswith("saliency"):
                shutil.copy(path, DOCS / path.name)
        inject_real.main(["--model", args.model, "--out", str(work / "inject")])
        for name in ("inject_metrics.rst", "inject_metrics.png"):
            shutil.copy(work / "inject" / name, DOCS / name)
    weights = Path(args.weights or args.model)
    if weights.exists():
        from evaluation import saliency

        has_data = (Path(args.data) / "index.json").exists()
        saliency.main(["--weights", str(weights), "--out", str(DOCS / "saliency.png")]
                      + (["--data", args.data] if has_data else []))
    else:
        print(f"{weights} not found: saliency.png left as it is")
    if not args.skip_speed:
        import subprocess
        import sys

        speed = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
        subprocess.run([sys.executable, str(speed), "--rst", str(DOCS / "speed.rst")],
                       check=True)
    (DOCS / "ensemble_comparison.rst").write_text(comparison_rst(card))
    from training import curves

    curves.main(["--model", args.model, "--out", str(DOCS / "training_curves.png")])
    if any(Path(args.compare).glob("*/history.json")):
        curves.main(["--runs", args.compare, "--out", str(DOCS / "compare_curves.png")])
    else:
        print(f"no runs in {args.compare}: compare_curves.png left as it is")
    print(f"wrote {sorted(p.name for p in DOCS.iterdir())}")


if __name__ == "__main__":
    main()
