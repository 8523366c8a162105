"""Tailored training from a user's frame, on a tiny frame and budget."""

import json
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable, Table

from asidfe_phot import MLPhotometry, cli
from asidfe_phot.datasets import make_star_field
from training import tailor
from training import tailor_calibration as calib


@pytest.fixture(name="frame_file", scope="module")
def fixture_frame_file(tmp_path_factory):
    # Enough bright isolated stars for the ePSF of psf_model="auto".
    image, _, _ = make_star_field((256, 256), 40, psf={"family": "moffat", "fwhm": 3.0,
                                                       "beta": 3.0},
                                  flux_range=(2e4, 4e5), sky=200.0, gain=2.0, border=14, seed=2)
    path = tmp_path_factory.mktemp("tailor") / "frame.fits"
    fits.PrimaryHDU(image.astype(np.float32), header=fits.Header({"GAIN": 2.0})).writeto(path)
    return path


def test_tailor_writes_a_usable_model_with_its_provenance(frame_file, tmp_path, capsys):
    out = tmp_path / "run"
    card = tailor.tailor(frame_file, out, config=tailor.QUICK, log=lambda *a: None)
    model_dir = out / "model"
    assert card["parent_model"] == "asidfe_tsmve_v5"
    assert card["tailored_to"]["image"] == "frame.fits"
    assert len(card["tailored_to"]["sha256"]) == 64
    conditions = card["tailored_to"]["conditions"]
    assert conditions["gain"] == 2.0 and conditions["gain_source"] == "given"
    assert 2.5 < conditions["psf_fwhm"] < 3.6
    assert sum(conditions["luminosity_function"]["counts"]) == conditions["n_sources"] > 10
    # The tailored set: injected stars with truths, split by round.
    index = json.loads((out / "data" / "index.json").read_text())
    assert all(index["splits"][s]["count"] > 0 for s in ("train", "val", "test"))
    meta = np.load(out / "data" / f"{index['splits']['train']['shards'][0]}.meta.npy")
    assert np.all(np.abs(meta["true_dx"] - meta["det_dx"]) < 2.0)
    assert np.all(meta["flux"] > 0) and np.all(meta["gain"] == 2.0)
    # Calibrations refitted on the frame, and the before/after statistics.
    for key in ("sigma_calibration", "sigma_calibration_auto", "flux_bias_correction"):
        assert card[key]["log10_core_snr"]
    # The network given the frame's PSF is calibrated apart, and the PSF mode's choice
    # between its values and the fit's measured on the frame.
    for key in ("sigma_calibration", "flux_bias_correction"):
        assert card["network_psf_calibration"][key]["log10_core_snr"]
    assert card["psf_mode_network_margin"] in calib.NETWORK_MARGINS
    assert card["psf_mode_network_margin"] >= 1      # an ePSF: the fit is not outweighed
    assert {"parent", "tailored"} <= set(card["tailored_validation"])
    for ratio, lo, hi in card["tailored_validation"]["paired_flux_error_ratio"].values():
        assert 0 < lo <= ratio <= hi
    # The model is usable as any model directory.
    image = fits.getdata(frame_file)
    phot = MLPhotometry(model=model_dir)
    assert phot.model_card["name"].endswith("_tailored")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = phot(image, init_params=QTable({"x": [128.0], "y": [128.0]}), gain=2.0)
    assert len(tbl) == 1
    # The command resumes: a finished tailoring is not redone (set, training, export,
    # calibration, validation); another recipe in the same folder is refused.
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rc = cli.main(["tailor", str(frame_file), "--out", str(out), "--quick"])
    assert rc == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files
    assert "tailored:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="other config"):
        tailor.tailor(frame_file, out, config={**tailor.QUICK, "seed": 5}, log=lambda *a: None)


def test_tailor_refuses_a_frame_without_a_gain(frame_file, tmp_path):
    data = fits.getdata(frame_file)
    path = tmp_path / "nogain.fits"
    fits.PrimaryHDU(data - 200.0).writeto(path)      # sky removed: no gain from sky / rms^2
    with pytest.raises(ValueError, match="gain"):
        tailor.tailor(path, tmp_path / "run", config=tailor.QUICK, log=lambda *a: None)


def test_the_psf_mode_choice_redone_from_the_diagnostics_is_the_packages(frame_file):
    # The margin is chosen, and the PSF mode's sigmas calibrated, on values chosen
    # offline from the network's and the fit's own estimates: at the card's margin (1)
    # they must be the values MLPhotometry chose.
    from astropy.io import fits as _fits
    from photutils.psf import CircularGaussianPRF

    data = _fits.getdata(frame_file)
    psf = CircularGaussianPRF(fwhm=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stars, _ = calib.ast_results(data, None, psf, 150, 3, gain=2.0, saturation=None,
                                     mask=None, error=None, frame_psf=psf,
                                     sigma_calibration="network")
    ok = calib.good_stars(stars, calibrating=True)
    chosen = calib.psf_mode_values(stars, ok, 1.0)
    final, _ = calib.pred_truth(stars, calibrating=True)
    assert ok.sum() > 50
    for key in ("flux", "flux_err", "dx", "dy", "dx_err", "dy_err"):
        np.testing.assert_array_equal(chosen[key], final[key])
    # Some values are the network's, some the fit's: the test sees both branches.
    took_fit = chosen["flux"] == calib.estimates(stars, ok, "_psf")["flux"]
    assert 0 < took_fit.sum() < took_fit.size
    margin, scores = calib.choose_network_margin(stars)
    assert margin in calib.NETWORK_MARGINS and set(scores) == set(calib.NETWORK_MARGINS)
    margin, scores = calib.choose_network_margin(stars, favour_network=False)
    assert margin >= 1 and set(scores) == set(calib.NETWORK_MARGINS) - set(
        calib.NETWORK_FAVOURING)


def _stars(errors, snr, flags=0):
    truth = np.full(errors.size, 1000.0)
    return Table({"found": np.ones(errors.size, bool), "flags": np.full(errors.size, flags),
                  "snr_true": snr, "flux_true": truth, "flux_fit": truth * (1 + errors)})


def test_paired_ratios_compare_the_same_stars():
    rng = np.random.default_rng(1)
    snr = np.repeat([30.0, 200.0], 400)
    errors = rng.normal(0, 0.05, snr.size)
    shipped = _stars(errors, snr)
    # About half the error on every star: the ratio is near 0.5, its interval around
    # it and clear of 1.
    halved = errors / 2 + rng.normal(0, 0.005, snr.size)
    ratios = calib.paired_ratios(shipped, _stars(halved, snr))
    assert set(ratios) == {"20-50", "100-300"}
    for ratio, lo, hi in ratios.values():
        assert abs(ratio - 0.5) < 0.05 and lo < ratio < hi < 0.7
    # The same errors: exactly 1. Flagged stars of either model are left out.
    assert all(r == (1.0, 1.0, 1.0) for r in
               calib.paired_ratios(shipped, _stars(errors, snr)).values())
    assert calib.paired_ratios(shipped, _stars(errors, snr, flags=1)) == {}
