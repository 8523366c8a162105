"""
What knowing the PSF costs: the ePSF build of ``psf_model="auto"`` and the PSF channel.

    python -m evaluation.psf_cost [--size 4096] [--n-sources 20000] [--model NAME]
                                  [--two-channel-model DIR]

On a simulated frame (Moffat stars, FWHM 2.5 px, sky 300, gain 2) prints:

* the time to choose the PSF stars and build the ePSF (`asidfe_phot.psf.build_epsf`),
  with the stars used;
* end-to-end MLPhotometry rates (sources/s) without a PSF (and, with
  ``--two-channel-model``, a contract-2 model's such as v4's, restored from git history:
  the channel's cost in the network), with the PSF channel only
  (the network fed the PSF, the fit skipped: the channel's own cost), and with
  ``psf_model`` given (channel + PSF fit) and ``"auto"`` (+ the build), in one run.

Not a test: numbers depend on the machine.
"""

import argparse
import time
import warnings

import numpy as np
from astropy.table import Table


def _timed(work):
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


def _rate(phot, image, init, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            phot(image, init_params=init, gain=2.0)
        best = min(best, time.perf_counter() - t0)
    return len(init) / best, best


def main(argv=None):
    from photutils.psf import MoffatPSF

    from asidfe_phot import MLPhotometry
    from asidfe_phot.background import estimate_background
    from asidfe_phot.datasets import make_star_field
    from asidfe_phot.psf import build_epsf

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--n-sources", type=int, default=20_000)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--two-channel-model", default=None,
                        help="a contract-2 model directory (no PSF channel, e.g. v4 from git "
                             "history, see models/CHANGELOG.md) for the channel's network cost")
    args = parser.parse_args(argv)
    shape = (args.size, args.size)
    image, truth, _ = make_star_field(shape, args.n_sources, flux_range=(300, 3e5),
                                      psf={"family": "moffat", "fwhm": 2.5, "beta": 3.0},
                                      sky=300.0, gain=2.0, read_noise=5.0, border=20, seed=1)
    init = Table({"x": np.asarray(truth["x"]), "y": np.asarray(truth["y"])})
    bkg, rms = estimate_background(image)
    t0 = time.perf_counter()
    epsf, info = build_epsf(image - bkg, rms)
    build = time.perf_counter() - t0
    print(f"frame {args.size}x{args.size}, {args.n_sources} sources")
    print(f"ePSF build (star choice + EPSFBuilder): {build:.2f} s, {info['psf_nstars']} stars, "
          f"oversampling {info.get('psf_oversampling')}, footprint {info.get('psf_footprint')} "
          f"px")
    alpha = 2.5 / (2 * np.sqrt(2 ** (1 / 3.0) - 1))
    true_psf = MoffatPSF(alpha=alpha, beta=3.0)
    base = MLPhotometry(model=args.model, aperture_correction=False, psf_model=None)
    rows = [("no PSF (network alone)", base)]
    if args.two_channel_model:
        rows.append(("no PSF, 2 input channels",
                     MLPhotometry(model=args.two_channel_model, aperture_correction=False,
                                  psf_model=None)))
    channel = None
    if base.model_card["contract"]["version"] >= 3:
        # The channel's own cost: a contract-3 network always reads three channels (zeros
        # without a PSF), so what the channel adds is rendering the PSF at every stamp.
        from asidfe_phot.psf import PSFSampler

        sampler = PSFSampler(true_psf)
        ref = np.rint(np.asarray(truth["x"])), np.rint(np.asarray(truth["y"]))
        channel = min(_timed(lambda: sampler.stamps(*ref)) for _ in range(args.repeat))
    rows += [("psf_model=true PSF (channel + fit)",
              MLPhotometry(model=args.model, aperture_correction=False, psf_model=true_psf)),
             ('psf_model="auto" (+ ePSF build)',
              MLPhotometry(model=args.model, aperture_correction=False, psf_model="auto"))]
    ref = None
    for label, phot in rows:
        rate, seconds = _rate(phot, image, init, args.repeat)
        ref = ref or rate
        print(f"  {label:38s} {rate:8.0f} sources/s  ({seconds:.2f} s, {rate / ref:.2f}x)")
        if phot is base and channel is not None:
            seconds += channel
            rate = len(init) / seconds
            print(f"  {'PSF channel only (no fit; + stamps)':38s} {rate:8.0f} sources/s  "
                  f"({seconds:.2f} s, {rate / ref:.2f}x)")


if __name__ == "__main__":
    main()
