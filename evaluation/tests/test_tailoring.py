"""The tailoring benefit benchmark on a tiny simulated frame of an unseen PSF."""

import numpy as np

from evaluation import tailoring
from training import tailor


def test_quick_tailoring_benchmark_on_an_unseen_psf(tmp_path):
    results = tailoring.run(tmp_path, ["coma"], tailor.QUICK, n_stars=120,
                            log=lambda *a: None)
    entry = results["coma"]
    assert entry["method"] == "the frame's own stars against truth"
    assert entry["shipped"] and entry["tailored"]
    for row in entry["shipped"] + entry["tailored"]:
        assert row["n"] >= 10 and row["flux_mare"] >= 0
    table = (tmp_path / "tailoring.rst").read_text()
    assert "coma" in table and "tailored MARE" in table


def _stars(errors, snr, flags=0):
    from astropy.table import Table
    truth = np.full(errors.size, 1000.0)
    return Table({"found": np.ones(errors.size, bool), "flags": np.full(errors.size, flags),
                  "snr_true": snr, "flux_true": truth, "flux_fit": truth * (1 + errors)})


def test_paired_ratios_compare_the_same_stars():
    rng = np.random.default_rng(1)
    snr = np.repeat([30.0, 200.0], 400)
    errors = rng.normal(0, 0.05, snr.size)
    shipped = _stars(errors, snr)
    # Half the error on every star: the ratio is 0.5 and its interval excludes 1.
    ratios = tailoring.paired_ratios(shipped, _stars(errors / 2, snr))
    assert set(ratios) == {"20-50", "100-300"}
    for ratio, lo, hi in ratios.values():
        assert abs(ratio - 0.5) < 1e-12 and lo < 0.5 < hi < 1
    # The same errors: exactly 1. Flagged stars of either model are left out.
    assert all(r == (1.0, 1.0, 1.0) for r in
               tailoring.paired_ratios(shipped, _stars(errors, snr)).values())
    assert tailoring.paired_ratios(shipped, _stars(errors, snr, flags=1)) == {}
