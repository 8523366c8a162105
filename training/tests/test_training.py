"""Training-side tests: the network, the data batches, export parity and the quick pipeline."""

import json

import numpy as np
import pytest
import torch

from asidfe_phot import _stamps
from training import simulate
from training.data import StampSet
from training.export import export_onnx, fuse_pad_into_conv, parity
from training.model import TSMVE, gaussian_nll, robust_gaussian_nll
from training.train import freeze, load_model


@pytest.fixture(scope="module", name="dataset")
def fixture_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    simulate.write_dataset(out, 10, seed=3, processes=1, log=lambda *a: None)
    return out


def test_output_shape_and_bounded_logvar():
    model = TSMVE()
    x = torch.randn(5, _stamps.N_INPUT_CHANNELS, _stamps.STAMP_SIZE, _stamps.STAMP_SIZE) * 100
    out = model(x)
    assert out.shape == (5, 6)
    assert torch.all(out[:, 3:] >= -16) and torch.all(out[:, 3:] <= 6)


def test_gaussian_nll_minimised_at_true_variance():
    rng = np.random.default_rng(0)
    targets = torch.from_numpy(rng.normal(0, 0.5, (20000, 3)).astype(np.float32))
    def nll(logvar):
        outputs = torch.cat([torch.zeros(20000, 3), torch.full((20000, 3), logvar)], dim=1)
        return float(gaussian_nll(outputs, targets))
    best = min(np.linspace(-4, 2, 61), key=nll)
    assert abs(best - np.log(0.25)) < 0.15


def test_robust_nll_keeps_the_variance_of_the_bulk_against_a_few_wild_stamps():
    # 0.2 % of the stamps wrong by 100 sigma: the Gaussian NLL's best sigma follows them
    # (4.6x the bulk's), the robust one stays near the bulk's (1.3x).
    rng = np.random.default_rng(0)
    n = 20000
    values = rng.normal(0, 0.5, (n, 3))
    values[:40] = 50.0
    targets = torch.from_numpy(values.astype(np.float32))

    def best(loss):
        def value(logvar):
            outputs = torch.cat([torch.zeros(n, 3), torch.full((n, 3), logvar)], dim=1)
            return float(loss(outputs, targets))
        return min(np.linspace(-4, 4, 161), key=value)

    assert best(gaussian_nll) > np.log(0.25) + 2.5
    assert abs(best(robust_gaussian_nll) - np.log(0.25)) < 0.7
    # Within 3 sigma everywhere, the two losses are the same.
    outputs = torch.cat([torch.zeros(n, 3), torch.zeros(n, 3)], dim=1)
    small = torch.from_numpy(rng.uniform(-2.9, 2.9, (n, 3)).astype(np.float32))
    assert torch.allclose(gaussian_nll(outputs, small), robust_gaussian_nll(outputs, small))


def test_split_by_frame_and_reproducible(dataset, tmp_path):
    index = json.loads((dataset / "index.json").read_text())
    frames = {s: set(StampSet(dataset, s).meta["frame"]) for s in simulate.SPLITS}
    assert not frames["train"] & frames["val"]
    assert not frames["train"] & frames["test"]
    assert not frames["val"] & frames["test"]
    assert index["splits"]["train"]["count"] > 0
    again = tmp_path / "again"
    simulate.write_dataset(again, 10, seed=3, processes=1, log=lambda *a: None)
    a = np.load(dataset / "train_0000.stamps.npy")
    b = np.load(again / "train_0000.stamps.npy")
    np.testing.assert_array_equal(a, b)


def test_detector_positions_close_to_truth(dataset):
    meta = StampSet(dataset, "train").meta
    offset = np.hypot(meta["det_dx"] - meta["true_dx"], meta["det_dy"] - meta["true_dy"])
    # Matched detections of S/N > 20 stars lie within a fraction of the FWHM of the truth.
    bright = meta["snr"] > 20
    assert np.median(offset[bright] / meta["fwhm"][bright]) < 0.15


def test_augmented_targets_follow_the_star(dataset):
    """A flipped/transposed/cropped stamp's target still points at the star's light."""
    data = StampSet(dataset, "train")
    meta = data.meta
    idx = np.flatnonzero((meta["snr"] > 200) & (meta["contamination"] < 0.05))[:50]
    assert idx.size > 5
    x, t, _ = data.batch(idx, np.random.default_rng(1))
    light = np.clip(np.sinh(x[:, 0]), 0, None)
    grid = np.arange(_stamps.STAMP_SIZE) - _stamps.STAMP_SIZE // 2
    core = light * (np.hypot(grid[None, :, None] - t[:, 1, None, None],
                             grid[None, None, :] - t[:, 0, None, None]) < 4)
    cx = (core.sum(axis=1) * grid).sum(axis=1) / core.sum(axis=(1, 2))
    cy = (core.sum(axis=2) * grid).sum(axis=1) / core.sum(axis=(1, 2))
    assert np.median(np.abs(cx - t[:, 0])) < 0.1
    assert np.median(np.abs(cy - t[:, 1])) < 0.1


def test_freeze_conv():
    model = TSMVE()
    freeze(model, ["conv"])
    assert not any(p.requires_grad for p in model.mean.convs.parameters())
    assert all(p.requires_grad for p in model.mean.heads.parameters())
    with pytest.raises(ValueError, match="unknown part"):
        freeze(model, ["heads"])


def test_onnx_parity_with_pads_folded_into_convs(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = TSMVE()
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    assert any(n.op_type == "Pad" for n in onnx.load(str(path)).graph.node)
    fuse_pad_into_conv(path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Pad" not in ops and ops.count("Conv") == 6
    check = parity(model, path)
    assert check["max_abs_diff"] < 1e-4


def test_load_model_from_exported_onnx(tmp_path):
    """Fine-tuning can start from a shipped model: its ONNX file gives back the same network."""
    torch.manual_seed(1)
    model = TSMVE()
    path = tmp_path / "model.onnx"
    export_onnx(model, path)
    fuse_pad_into_conv(path)
    loaded = load_model(tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    torch.save({"model": model.state_dict(), "stage": "step2"}, tmp_path / "best.pt")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "best.pt")(x), model.eval()(x))
    # A state from another architecture fails instead of leaving random weights.
    torch.save({"model": {"mean.convs.0.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError):
        load_model(tmp_path / "bad.pt")


def test_quick_pipeline_end_to_end(tmp_path):
    """simulate -> steps 1, 2, 2 continued, 2 on broad PSFs -> export -> calibrate -> ensemble
    (the test metrics are the evaluation's: evaluation/tests)."""
    import warnings

    from asidfe_phot import MLPhotometry
    from asidfe_phot.datasets import make_test_image
    from asidfe_phot.models import verify_model
    from training import pipeline

    config = dict(pipeline.QUICK)
    card = pipeline.run(tmp_path / "run", config, log=lambda *a: None)
    model_dir = tmp_path / "run" / "model" / f"{card['name']}_v{card['version']}"
    _, card2 = verify_model(model_dir)
    assert card2["sha256"] == card["sha256"]
    assert card["parity"]["max_abs_diff"] < 1e-4
    assert "ensemble_comparison" in card
    assert card["training_data_broad"]["preset"] == "broad"
    assert "airy" in card["training_data_broad"]["families"]
    cal = card["sigma_calibration"]
    assert len(cal["log10_core_snr"]) == len(cal["dx"]) == len(cal["flux"]) == cal["n_bins"]
    bias = card["flux_bias_correction"]
    assert len(bias["log10_core_snr"]) == len(bias["factor"]) == bias["n_bins"]
    assert all(f > 0 for t in ("dx", "dy", "flux") for f in cal[t])
    assert card["training_data"]["counts"]["train"] > 0
    assert set(card["history"]) == {"step1", "step2", "step2_restart", "step2_mixed"}
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 0
    assert (tmp_path / "run" / "compare" / "curves.png").stat().st_size > 0
    assert "validation frames (2 recipe(s))" in cal["fitted_on"]
    image, truth = make_test_image(shape=(64, 64), n_sources=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = MLPhotometry(model=model_dir)(image, init_params=truth, gain=2.0)
    assert len(tbl) == 4 and np.all(np.isfinite(tbl["flux_fit"]))


def test_interrupted_training_equals_uninterrupted(dataset, tmp_path):
    from training.train import train

    kwargs = {"eval_every": 10_000, "log": lambda *a: None, "batch_size": 32}
    train(dataset, "step1", tmp_path / "a", 8 * 32, **kwargs)
    train(dataset, "step1", tmp_path / "b", 8 * 32, max_steps=3, **kwargs)
    assert not (tmp_path / "b" / "DONE").exists()
    train(dataset, "step1", tmp_path / "b", 8 * 32, **kwargs)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_sigma_calibration_recovers_known_miscalibration():
    from training.calibrate import fit_sigma_calibration

    rng = np.random.default_rng(0)
    n = 60_000
    snr = 10 ** rng.uniform(0.5, 3.5, n)
    truth = {"dx": np.zeros(n), "dy": np.zeros(n), "flux": snr.copy()}
    # True errors: 1 px and unit flux noise; predicted sigmas off by 2 (x), 1 (y) and a
    # factor that jumps at core S/N 100 (flux): the fitted factors must undo exactly that.
    flux_factor = np.where(snr < 100, 0.5, 2.0)
    pred = {"dx": rng.normal(0, 1, n), "dy": rng.normal(0, 1, n),
            "flux": snr + rng.normal(0, 1, n),
            "dx_err": np.full(n, 0.5), "dy_err": np.ones(n), "flux_err": 1 / flux_factor,
            "snr_core": snr}
    cal = fit_sigma_calibration(pred, truth, n_bins=6)
    np.testing.assert_allclose(cal["dx"], 2.0, rtol=0.05)
    np.testing.assert_allclose(cal["dy"], 1.0, rtol=0.05)
    knots = np.asarray(cal["log10_core_snr"])
    expected = np.where(knots < 2, 0.5, 2.0)
    clear = np.abs(knots - 2) > 0.3
    np.testing.assert_allclose(np.asarray(cal["flux"])[clear], expected[clear], rtol=0.05)
    res = {k: v.copy() for k, v in pred.items()}
    _stamps.calibrate_sigmas(res, cal, snr_core=pred["snr_core"])
    z = (res["dx"] - truth["dx"]) / res["dx_err"]
    assert abs(np.std(z) - 1) < 0.05
    with pytest.raises(ValueError, match="core S/N"):
        _stamps.calibrate_sigmas(dict(pred), cal)


def test_flux_bias_fit_undoes_a_known_pull():
    from training.calibrate import fit_flux_bias

    rng = np.random.default_rng(1)
    snr = 10 ** rng.uniform(0, 3, 20_000)
    # Predicted / true flux: 1.5 at core S/N 1, falling to 1 at 10 and above.
    pull = 1 + 0.5 * np.clip(1 - np.log10(snr), 0, 1)
    ratio = pull * (1 + rng.normal(0, 0.01, snr.size))
    fit = fit_flux_bias(snr, ratio, n_bins=8)
    knots = np.asarray(fit["log10_core_snr"])
    np.testing.assert_allclose(fit["factor"], 1 / (1 + 0.5 * np.clip(1 - knots, 0, 1)),
                               rtol=0.03)


def test_family_exclusion(dataset):
    from asidfe_phot.datasets import PSF_FAMILIES

    full = StampSet(dataset, "train")
    held = PSF_FAMILIES.index("moffat")
    rest = StampSet(dataset, "train", exclude_families=["moffat"])
    assert held not in set(rest.meta["family"])
    assert len(rest) == np.count_nonzero(full.meta["family"] != held)
    limited = StampSet(dataset, "train", limit=5, exclude_families=["moffat"])
    assert len(limited) == min(5, len(rest))


def test_stop_after_keeps_the_schedule_and_finishes(dataset, tmp_path):
    from training.train import train

    kwargs = {"eval_every": 10_000, "log": lambda *a: None, "batch_size": 32}
    train(dataset, "step1", tmp_path / "full", 20 * 32, max_steps=12, **kwargs)
    train(dataset, "step1", tmp_path / "stop", 20 * 32, stop_after=12 * 32, **kwargs)
    assert (tmp_path / "stop" / "DONE").exists()
    assert not (tmp_path / "full" / "DONE").exists()
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    stop = torch.load(tmp_path / "stop" / "last.pt", weights_only=False)
    assert stop["state"]["step"] == full["state"]["step"] == 12
    assert stop["scheduler"]["_last_lr"] == full["scheduler"]["_last_lr"]


def test_training_curves_from_histories(tmp_path):
    from training import curves

    for name, nll in (("step2", [-1.0, -2.0]), ("mve0", [0.5, -0.5])):
        run = tmp_path / name
        run.mkdir()
        history = [{"samples": s, "train_loss": v, "val_mse": 0.1, "val_mae": 0.2, "val_nll": v}
                    for s, v in zip((100, 200), nll)]
        (run / "history.json").write_text(json.dumps(history))
    runs = curves.read_runs(tmp_path)
    assert list(runs) == ["mve0", "step2"]
    fig = curves.plot_curves(runs, tmp_path / "c.png", consecutive=True)
    nll_axis = fig.axes[3]
    # Consecutive runs: the second starts where the first ended.
    assert [list(line.get_xdata()) for line in nll_axis.lines] == [[100, 200], [300, 400]]
    assert (tmp_path / "c.png").stat().st_size > 0


def test_psf_stage_names_the_missing_parent():
    from asidfe_phot.exceptions import ModelError
    from training import pipeline

    with pytest.raises(ModelError, match="pass its model directory with --init"):
        pipeline._shipped_parent(pipeline.PSF_STAGE["init"])
    assert pipeline._shipped_parent("asidfe_tsmve_v5").name == "asidfe_tsmve_v5"


def test_quick_psf_stage_end_to_end(tmp_path):
    """The PSF-conditioned stage: v4 widened -> steps 1, 2 on data with PSF stamps -> export
    (contract 3) -> calibrations without and with a PSF."""
    import warnings

    from photutils.psf import CircularGaussianPRF

    from asidfe_phot import MLPhotometry
    from asidfe_phot.datasets import make_test_image
    from asidfe_phot.models import model_path
    from training import pipeline

    # The parent (v4) no longer ships: the shipped model without its PSF channel's input
    # weights stands in for it, so the stage still widens a contract-2 model.
    state = load_model(model_path("asidfe_tsmve_v5")).state_dict()
    state = {k: (v[:, :2].contiguous() if v.ndim == 4 and v.shape[1] == 3 else v)
             for k, v in state.items()}
    parent = tmp_path / "parent.pt"
    torch.save({"model": state}, parent)
    card = pipeline.run_psf_stage(tmp_path / "run", dict(pipeline.QUICK_PSF_STAGE),
                                  log=lambda *a: None, init=parent)
    assert card["contract"]["version"] == 3 and card["input"]["shape"][1] == 3
    assert card["parent_model"] == pipeline.PSF_STAGE["init"]
    assert all(d.get("psf_errors") for d in card["training_data"])
    for key in ("sigma_calibration", "sigma_calibration_psf", "sigma_calibration_auto"):
        assert all(f > 0 for f in card[key]["flux"]), key
    model_dir = tmp_path / "run" / "model" / "asidfe_tsmve_v5"
    image, truth = make_test_image(shape=(64, 64), n_sources=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = MLPhotometry(model=model_dir, psf_model=CircularGaussianPRF(fwhm=3.0))(
            image, init_params=truth, gain=2.0)
    assert len(tbl) == 4 and np.all(np.isfinite(tbl["flux_fit"]))


def test_shared_trunk_starts_with_the_parent_means(tmp_path):
    """share_trunk keeps the mean branch exactly; export and reload keep the architecture."""
    from asidfe_phot.models import model_path
    from training.export import export
    from training.model import share_trunk, shared_convs_of

    parent = load_model(model_path("asidfe_tsmve_v5"))
    shared = load_model(model_path("asidfe_tsmve_v5"), shared_convs=2)
    assert shared.shared_convs == 2 and len(shared.logvar.convs) == 1
    x = torch.randn(8, _stamps.N_INPUT_CHANNELS, _stamps.STAMP_SIZE, _stamps.STAMP_SIZE)
    with torch.no_grad():
        a, b = parent(x), shared(x)
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=0, atol=0)
    assert torch.all(b[:, 3:] >= -16) and torch.all(b[:, 3:] <= 6)
    with pytest.raises(ValueError, match="two-branch"):
        share_trunk(shared.state_dict(), 1)
    with pytest.raises(ValueError, match="shared_convs must be"):
        TSMVE(shared_convs=3)
    torch.save({"model": shared.state_dict()}, tmp_path / "w.pt")
    card = export(tmp_path / "w.pt", tmp_path / "m", "t", 1)
    assert card["architecture"]["shared_convs"] == 2
    assert card["parity"]["max_abs_diff"] < 1e-4
    again = load_model(tmp_path / "m")
    assert shared_convs_of(again.state_dict()) == 2
    with torch.no_grad():
        torch.testing.assert_close(again(x), b)


def test_int8_parity_judges_each_bin():
    from training.quantize import bin_figures, parity

    rng = np.random.default_rng(0)
    n = 4000
    targets = np.column_stack([rng.normal(0, 0.3, n), rng.normal(0, 0.3, n),
                               rng.uniform(1, 50, n)]).astype(np.float32)
    sigma = np.full((n, 3), 0.1, np.float32)
    outputs = np.hstack([targets + rng.normal(0, 1, (n, 3)) * sigma, 2 * np.log(sigma)])
    snr = rng.uniform(3, 2000, n)
    fp32 = bin_figures(outputs, targets, snr)
    assert [r["snr_lo"] for r in fp32][:2] == [3.0, 5.0]
    assert all(abs(r["flux_zstd"] - 1) < 0.2 for r in fp32 if r["n"] > 300)
    same = parity(fp32, fp32, min_stamps=100)
    assert same["passed"] and same["worst_relative_change"] == 0 and same["bins_judged"] > 3
    worse = outputs.copy()
    worse[:, 3:] += 2 * np.log(1.1)  # sigmas 10 % larger: z-score std 9 % smaller
    verdict = parity(fp32, bin_figures(worse, targets, snr), min_stamps=100)
    assert not verdict["passed"] and 0.08 < verdict["worst_relative_change"] < 0.1
    assert not parity(fp32, fp32, min_stamps=10**6)["passed"]  # nothing judged: no pass


def test_quick_fast_stage_end_to_end(tmp_path):
    """The shared-trunk stage: v5 -> step 1 -> step 2 -> export -> calibrations -> int8 graph
    with its parity record; the exported model runs in MLPhotometry."""
    from asidfe_phot import MLPhotometry
    from asidfe_phot.datasets import make_test_image
    from training import pipeline

    card = pipeline.run_psf_stage(tmp_path / "run", dict(pipeline.QUICK_FAST_STAGE),
                                  version=6, log=lambda *a: None)
    assert card["architecture"]["shared_convs"] == 2
    assert card["parent_model"] == "asidfe_tsmve_v5"
    assert set(card["history"]) == {"step1", "step2"}
    record = card["int8"]
    assert record["file"] == "model_int8.onnx" and len(record["int8_bins"]) == 8
    model_dir = tmp_path / "run" / "model" / "asidfe_tsmve_v6"
    assert (model_dir / "model_int8.onnx").stat().st_size > 0
    image, truth = make_test_image(shape=(64, 64), n_sources=4)
    tbl = MLPhotometry(model=model_dir, psf_model=None)(image, init_params=truth, gain=2.0)
    assert len(tbl) == 4 and np.all(np.isfinite(tbl["flux_fit"]))
