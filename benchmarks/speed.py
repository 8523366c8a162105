"""
End-to-end speed of MLPhotometry against photutils, in the same run.

    python benchmarks/speed.py [--size 4096] [--n-sources 50000] [--psf-subset 1000]

Prints sources/second for: the network alone (onnxruntime on ready stamps, the
ceiling), MLPhotometry end to end (image + table -> QTable, background
estimation included), photutils ``aperture_photometry`` and photutils
``PSFPhotometry`` (on a subset, rate extrapolated: it is too slow for all
sources), and the ratios. Not a test: numbers depend on the machine.
"""

import argparse
import platform
import time
import warnings

import numpy as np
from astropy.table import Table


def _timed(fn, repeat=1):
    best = np.inf
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--n-sources", type=int, default=50_000)
    parser.add_argument("--psf-subset", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    import onnxruntime as ort
    from photutils.aperture import CircularAperture, aperture_photometry
    from photutils.psf import CircularGaussianPRF, PSFPhotometry

    from asidfe_phot import MLPhotometry, _stamps
    from asidfe_phot._onnx import run as ort_run
    from asidfe_phot.datasets import make_star_field
    from asidfe_phot.exceptions import AsidfePhotWarning

    shape = (args.size, args.size)
    t0 = time.perf_counter()
    image, truth, meta = make_star_field(shape, args.n_sources,
                                         psf={"family": "moffat", "fwhm": 3.0, "beta": 3.0},
                                         flux_range=(300, 1e6), sky=300.0, gain=2.0,
                                         border=2, seed=42)
    print(f"simulated {shape[0]}x{shape[1]} with {args.n_sources} sources in "
          f"{time.perf_counter() - t0:.1f} s")
    init = Table({"x": truth["x"], "y": truth["y"]})
    print(f"machine: {platform.processor() or platform.machine()}, onnxruntime "
          f"{ort.__version__}")

    phot = MLPhotometry(batch_size=args.batch_size)
    n = args.n_sources

    # The ceiling: the network alone on ready inputs.
    rng = np.random.default_rng(0)
    ready = rng.normal(0, 1, (args.batch_size, 2, _stamps.STAMP_SIZE,
                              _stamps.STAMP_SIZE)).astype(np.float32)
    t_net, _ = _timed(lambda: [ort_run(phot._session, ready) for _ in range(5)], 1)
    net_rate = 5 * args.batch_size / t_net

    def run_ml():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AsidfePhotWarning)
            return phot(image, init_params=init, gain=2.0)

    t_ml, tbl = _timed(run_ml, args.repeat)
    ml_rate = n / t_ml

    def run_ml_known_background():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AsidfePhotWarning)
            return phot(image, init_params=init, gain=2.0, background=meta["background"])

    t_ml_bkg, _ = _timed(run_ml_known_background, args.repeat)

    apertures = CircularAperture(np.column_stack([truth["x"], truth["y"]]), r=4.5)
    error = meta["noise"]
    sub = image - meta["background"]
    t_ap, _ = _timed(lambda: aperture_photometry(sub, apertures, error=error), args.repeat)
    ap_rate = n / t_ap

    m = min(args.psf_subset, n)
    psf_model = CircularGaussianPRF(fwhm=3.0)
    psfphot = PSFPhotometry(psf_model, fit_shape=(7, 7), aperture_radius=4)
    init_psf = Table({"x": truth["x"][:m], "y": truth["y"][:m]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_psf, _ = _timed(lambda: psfphot(sub, error=error, init_params=init_psf), 1)
    psf_rate = m / t_psf

    print()
    print(f"{'method':42s} {'sources/s':>12s} {'ratio to MLPhotometry':>22s}")
    rows = [
        ("network alone (onnxruntime, ceiling)", net_rate),
        ("MLPhotometry end to end", ml_rate),
        ("MLPhotometry, background given", n / t_ml_bkg),
        ("photutils aperture_photometry", ap_rate),
        (f"photutils PSFPhotometry ({m} sources)", psf_rate),
    ]
    for name, rate in rows:
        print(f"{name:42s} {rate:12.0f} {rate / ml_rate:22.3f}")
    print()
    print(f"MLPhotometry end to end = {ml_rate / net_rate:.1%} of the network-alone ceiling; "
          f"{ml_rate / psf_rate:.0f}x PSFPhotometry; {len(tbl)} rows, "
          f"{np.count_nonzero(tbl['flags'])} flagged")


if __name__ == "__main__":
    main()
