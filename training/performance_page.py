"""
Regenerate the tables and figures of the docs' Performance page.

    python -m training.performance_page --model models/asidfe_tsmve_v1 --data runs/data_v1 \
        [--n-frames 60] [--methods ml,sep,aper,sex,psfex,psf] [--skip-synthetic] [--skip-real]

Runs the synthetic evaluation (`training.evaluate`) and the real-frame
comparison (`training.evaluate_real`), then copies their tables and figures
into ``docs/_static/performance/``, and writes the model's TS-MVE vs
ensemble comparison (from its card) as an RST table there.
"""

import argparse
import json
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "_static" / "performance"


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/asidfe_tsmve_v1")
    parser.add_argument("--data", default="runs/data_v1")
    parser.add_argument("--n-frames", type=int, default=60)
    parser.add_argument("--work", default="runs/performance")
    parser.add_argument("--methods", default="all",
                        help="methods of the synthetic evaluation (see training.evaluate)")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args(argv)
    work = Path(args.work)
    DOCS.mkdir(parents=True, exist_ok=True)
    if not args.skip_synthetic:
        from training import evaluate

        evaluate.evaluate_model(args.model, args.data, args.n_frames, out=work / "synthetic",
                                methods=args.methods)
        # metrics.{png,rst,ecsv}, the per-method tables metrics_{flux,position,calibration,
        # crlb,failures}.rst, the same for metrics_sparse* and metrics_crowded*, wins.json
        # and timings.json.
        for path in sorted((work / "synthetic").iterdir()):
            if ((path.name.startswith("metrics") and path.suffix in (".png", ".rst", ".ecsv"))
                    or path.name in ("wins.json", "timings.json")):
                shutil.copy(path, DOCS / path.name)
    if not args.skip_real:
        from training import evaluate_real

        evaluate_real.main(["--model", args.model, "--out", str(work / "real")])
        for path in (work / "real").iterdir():
            if path.suffix in (".png", ".rst") and not path.name.startswith("saliency"):
                shutil.copy(path, DOCS / path.name)
    card = json.loads((Path(args.model) / "config.json").read_text())
    (DOCS / "ensemble_comparison.rst").write_text(comparison_rst(card))
    print(f"wrote {sorted(p.name for p in DOCS.iterdir())}")


if __name__ == "__main__":
    main()
