"""
Write the golden tables of ``tests/test_golden.py``.

The bundled default model measures the bundled demo frame (ESO NTT, 65 catalogued
sources), once per case below, on the CPU; each result is stored as
``tests/data/golden_<case>.ecsv`` with the model's sha256 and the versions that made it.

Regenerate the tables only when the numbers are meant to change (a new or recalibrated
model, a deliberate change of the preprocessing or of the PSF fit), from a clean checkout
with the package installed (``pip install .``), and commit them with that change::

    python tests/data/make_golden.py

``python tests/data/make_golden.py --check`` compares instead of writing (what the test
does) and exits non-zero when a table differs.
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

DATA = Path(__file__).resolve().parent

#: Relative tolerance of fluxes and of all uncertainties, absolute tolerance of positions (px).
RTOL = 1e-4
POSITION_ATOL = 1e-4

#: Columns stored and compared; flags are compared exactly.
FLUX_COLUMNS = ("flux_fit", "flux_err", "x_err", "y_err")
POSITION_COLUMNS = ("x_fit", "y_fit")
COLUMNS = ("id", *POSITION_COLUMNS, *FLUX_COLUMNS, "flags")

#: The cases: keyword arguments of MLPhotometry besides the default model. On the demo
#: frame "auto" (the default) finds too few PSF stars and measures without a PSF, so the
#: analytic PSF (the frame's FWHM is about 2.2 px) is what exercises the PSF channel of
#: the network and the joint PSF fit.
CASES = {
    "default": {},
    "no_psf": {"psf_model": None},
    "gaussian_psf": {"psf_model": ("CircularGaussianPRF", {"fwhm": 2.2})},
}


def _psf_model(spec):
    if not isinstance(spec, tuple):
        return spec
    import photutils.psf

    name, kwargs = spec
    return getattr(photutils.psf, name)(**kwargs)


def measure(case):
    """The table of one case, as MLPhotometry returns it (CPU, all warnings silenced)."""
    from asidfe_phot import MLPhotometry
    from asidfe_phot.datasets import load_demo_image

    kwargs = {key: _psf_model(value) for key, value in CASES[case].items()}
    image, _, catalog = load_demo_image()
    phot = MLPhotometry(providers=["CPUExecutionProvider"], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return phot(image, init_params=catalog)


def golden_path(case):
    return DATA / f"golden_{case}.ecsv"


def to_golden(tbl, case):
    """The stored form: plain float64 / int columns and the provenance in ``meta``."""
    import astropy
    import onnxruntime
    import photutils

    import asidfe_phot

    out = Table()
    for name in COLUMNS:
        column = tbl[name]
        out[name] = np.asarray(getattr(column, "value", column))
    out.meta = {
        "case": case,
        "call": f"MLPhotometry({_describe(CASES[case])})(image, init_params=catalog)",
        "data": "asidfe_phot.datasets.load_demo_image()",
        "model_name": tbl.meta["model_name"],
        "model_version": tbl.meta["model_version"],
        "model_sha256": tbl.meta["model_sha256"],
        "made_with": {
            "asidfe_phot": asidfe_phot.__version__,
            "numpy": np.__version__,
            "astropy": astropy.__version__,
            "photutils": photutils.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "regenerate": "python tests/data/make_golden.py",
    }
    return out


def _describe(kwargs):
    parts = []
    for key, value in kwargs.items():
        if isinstance(value, tuple):
            name, args = value
            value = f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
        else:
            value = repr(value)
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def compare(tbl, golden):
    """Differences between a result and its golden table, as messages (empty: none)."""
    problems = []
    if tbl.meta["model_sha256"] != golden.meta["model_sha256"]:
        problems.append(
            f"the model is not the one the table was made with "
            f"({tbl.meta['model_sha256'][:12]} != {golden.meta['model_sha256'][:12]})"
        )
    if len(tbl) != len(golden):
        return [*problems, f"{len(tbl)} rows, expected {len(golden)}"]
    new = to_golden(tbl, golden.meta.get("case", ""))
    if not np.array_equal(new["id"], golden["id"]):
        problems.append("the ids differ")
    flags = np.flatnonzero(np.asarray(new["flags"]) != np.asarray(golden["flags"]))
    if flags.size:
        problems.append(
            f"flags differ in rows {flags.tolist()}: {new['flags'][flags].tolist()}, "
            f"expected {golden['flags'][flags].tolist()}"
        )
    for names, rtol, atol, what in (
        (FLUX_COLUMNS, RTOL, 0.0, "relative"),
        (POSITION_COLUMNS, 0.0, POSITION_ATOL, "px"),
    ):
        for name in names:
            a, b = np.asarray(new[name], float), np.asarray(golden[name], float)
            bad = ~np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
            if bad.any():
                with np.errstate(divide="ignore", invalid="ignore"):
                    diff = np.abs(a - b) / (np.abs(b) if rtol else 1.0)
                worst = int(np.nanargmax(np.where(bad, diff, np.nan)))
                problems.append(
                    f"{name}: {int(bad.sum())} rows beyond {rtol or atol:g} {what}; "
                    f"row {worst}: {float(a[worst])!r}, expected {float(b[worst])!r}"
                )
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with the stored tables instead of writing them",
    )
    args = parser.parse_args(argv)
    import asidfe_phot

    print(f"asidfe_phot {asidfe_phot.__version__} from {Path(asidfe_phot.__file__).parent}")
    failed = False
    for case in CASES:
        tbl = measure(case)
        path = golden_path(case)
        if args.check:
            problems = compare(tbl, Table.read(path))
            failed |= bool(problems)
            print(f"{path.name}: " + ("; ".join(problems) if problems else "unchanged"))
        else:
            to_golden(tbl, case).write(path, overwrite=True)
            print(f"wrote {path} ({len(tbl)} rows, model {tbl.meta['model_sha256'][:12]})")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
