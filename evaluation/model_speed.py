"""
Networks side by side: each model's bare network rate (its ceiling) and MLPhotometry's
end-to-end rate on the same frame, in one run.

    python -m evaluation.model_speed --models runs/models/asidfe_tsmve_v4,asidfe_tsmve_v5,\
asidfe_tsmve_v6,asidfe_tsmve_v6:int8 [--size 4096] [--n-sources 50000] [--rounds 3]

A model is a shipped name or a model directory, ``:int8`` its quantized graph. Each
measurement runs in a fresh process, and the models take turns within each round
(round-robin), so a slow spell of the machine hits them all alike; the best round is
reported (the least disturbed). End to end is ``psf_model=None`` with the catalogue given
(stamps, background, network, calibrations, aperture correction), the default for a
catalogue-driven survey run. Ratios are to the first model. Not a test: numbers depend on
the machine.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _parse_model(spec):
    name, _, precision = spec.partition(":")
    return name, precision or "fp32"


def worker(spec, inputs, what, batch_size, chunk):
    """One measurement in a fresh process: stamps/s of the network or sources/s end to end."""
    from astropy.table import Table

    from asidfe_phot import MLPhotometry, _onnx, _stamps
    from asidfe_phot.exceptions import AsidfePhotWarning

    name, precision = _parse_model(spec)
    _onnx.RUN_CHUNK = chunk
    phot = MLPhotometry(model=name, precision=precision, psf_model=None,
                        batch_size=batch_size)
    if what == "network":
        channels = _stamps.input_channels(phot.model_card["contract"]["version"])
        ready = np.random.default_rng(0).normal(
            0, 1, (4 * batch_size, channels, _stamps.STAMP_SIZE, _stamps.STAMP_SIZE)
        ).astype(np.float32)
        _onnx.run(phot.session, ready[:chunk])
        t0 = time.perf_counter()
        _onnx.run(phot.session, ready)
        return {"rate": len(ready) / (time.perf_counter() - t0)}
    d = np.load(inputs)
    init = Table({"x": d["x"], "y": d["y"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AsidfePhotWarning)
        phot(d["image"][:256, :256], init_params=init[:20], gain=2.0)  # warm-up
        t0 = time.perf_counter()
        tbl = phot(d["image"], init_params=init, gain=2.0)
    seconds = time.perf_counter() - t0
    return {"rate": len(tbl) / seconds, "seconds": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="comma-separated NAME_OR_DIR[:int8]")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--n-sources", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=None,
                        help="stamps per onnxruntime call (default: the package's)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--what", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from asidfe_phot import _onnx

    chunk = args.chunk or _onnx.RUN_CHUNK
    if args.worker:
        print(json.dumps(worker(args.worker, args.inputs, args.what, args.batch_size, chunk)))
        return
    from asidfe_phot.datasets import make_star_field

    specs = [m.strip() for m in args.models.split(",") if m.strip()]
    image, truth, _ = make_star_field((args.size, args.size), args.n_sources,
                                      psf={"family": "moffat", "fwhm": 3.0, "beta": 3.0},
                                      flux_range=(300, 1e6), sky=300.0, gain=2.0, border=2,
                                      seed=42)
    results = {s: {"network": [], "end_to_end": []} for s in specs}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "frame.npz"
        np.savez(inputs, image=image.astype(np.float32), x=truth["x"], y=truth["y"])
        del image
        for r in range(args.rounds):
            for what in ("network", "end_to_end"):
                for spec in specs:
                    out = subprocess.run(
                        [sys.executable, "-m", "evaluation.model_speed", "--models", spec,
                         "--worker", spec, "--what", what, "--inputs", str(inputs),
                         "--batch-size", str(args.batch_size), "--chunk", str(chunk)],
                        capture_output=True, text=True, check=True, cwd=ROOT)
                    value = json.loads(out.stdout.strip().splitlines()[-1])["rate"]
                    results[spec][what].append(value)
                    print(f"round {r + 1} {what:10s} {spec}: {value:,.0f}/s", flush=True)
    first = specs[0]
    best = {s: {k: max(v) for k, v in results[s].items()} for s in specs}
    print(f"\n{args.size}x{args.size}, {args.n_sources} sources, best of {args.rounds} rounds, "
          f"onnxruntime chunk {chunk}")
    print(f"{'model':40s} {'network/s':>10s} {'end-to-end/s':>13s} {'e2e/ceiling':>12s} "
          f"{'e2e vs ' + Path(first).name:>18s}")
    for s in specs:
        b = best[s]
        print(f"{s:40s} {b['network']:10,.0f} {b['end_to_end']:13,.0f} "
              f"{b['end_to_end'] / b['network']:12.2f} "
              f"{b['end_to_end'] / best[first]['end_to_end']:18.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"size": args.size, "n_sources": args.n_sources, "rounds": args.rounds,
             "chunk": chunk, "runs": results, "best": best}, indent=1))


if __name__ == "__main__":
    main()
