"""evaluation.injection: 30 artificial stars injected into a cut-out of the real NTT frame."""

import numpy as np
import pytest

from evaluation import REAL_DATA_VARIABLE
from evaluation import injection as ir

pytestmark = pytest.mark.skipif(
    not (ir.REAL / ir.FRAMES["ntt"]["file"]).exists(),
    reason=f"real frames not found at {ir.REAL}; set {REAL_DATA_VARIABLE} to the folder "
           "holding them (the project's shared/real)")


def test_injected_stars_recovered():
    from asidfe_phot import MLPhotometry

    frame = ir.load_frame("ntt", cutout=(slice(300, 556), slice(300, 556)))
    image, truth = ir.inject(frame, 30, np.random.default_rng(3))
    res = ir.measure(frame, image, truth, MLPhotometry(threads=1))
    assert len(truth) == len(res) == 30
    # The injection itself: the image changed by the injected total.
    assert np.isclose(float((image - frame["data"]).sum(dtype=np.float64)),
                      truth["flux_true"].sum(), rtol=0.01)
    bright = np.asarray(truth["snr_true"] > 50)
    assert bright.sum() >= 5
    # Every star comes back in input order (injected stars are >= 8 px apart).
    for m, tol in (("ml", 0.15), ("psf", 0.05)):
        d = np.hypot(res[f"x_{m}"] - truth["x_true"], res[f"y_{m}"] - truth["y_true"])
        assert np.all(d[bright] < tol), (m, d[bright])
    assert np.all(np.isfinite(res["flux_err_ml"]) & (res["flux_err_ml"] > 0))
    # The fit with the true PSF recovers bright clean stars to a few per cent.
    good = bright & np.asarray(truth["clean"])
    ratio = np.asarray(res["flux_psf"])[good] / np.asarray(truth["flux_true"])[good]
    assert good.sum() >= 5
    assert np.all(np.abs(ratio - 1) < 0.03), ratio
    # The S/N was solved for: it spans the requested range.
    assert ir.SNR_RANGE[0] * 0.99 <= truth["snr_true"].min() < truth["snr_true"].max() <= 3030
