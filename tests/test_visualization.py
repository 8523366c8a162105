"""Tests of asidfe_phot.visualization (behaviour only: figures are made, inputs are checked)."""

import astropy.units as u
import matplotlib
import numpy as np
import pytest
from astropy.nddata import NDData
from astropy.table import QTable
from matplotlib.figure import Figure

from asidfe_phot import flags
from asidfe_phot.exceptions import AsidfePhotWarning
from asidfe_phot.visualization import plot_calibration, plot_residuals, plot_stamps

matplotlib.use("agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(name="result")
def fixture_result():
    """A fake MLPhotometry result on a 64x64 image (no model run: fast and deterministic)."""
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 1.0, (64, 64)).astype(np.float32)
    x = np.array([10.2, 30.7, 50.1, 1.0, 62.5, 33.3])
    y = np.array([12.4, 31.1, 20.9, 1.0, 40.0, 55.5])
    yy, xx = np.mgrid[:64, :64]
    for xi, yi in zip(x, y):
        image += 50 * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / 4.0)
    tbl = QTable()
    tbl["id"] = np.arange(1, 7)
    tbl["x_init"], tbl["y_init"] = np.round(x), np.round(y)
    tbl["x_fit"], tbl["y_fit"] = x, y
    tbl["x_err"] = np.array([0.05, 0.1, 0.2, 0.5, np.nan, 0.3])
    tbl["y_err"] = np.array([0.06, 0.1, 0.2, 0.5, np.nan, 0.3])
    tbl["flux_fit"] = np.array([600.0, 650.0, 580.0, 300.0, np.nan, 610.0])
    tbl["flux_err"] = np.array([20.0, 25.0, 22.0, 40.0, np.nan, 30.0])
    tbl["flags"] = np.array([0, 0, 0, flags.EDGE, flags.NO_OVERLAP, flags.NO_SOURCE_NOISE],
                            dtype=np.int32)
    tbl["x_fit"][4] = tbl["y_fit"][4] = np.nan
    return image, tbl


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def test_plot_stamps(result):
    image, tbl = result
    fig = plot_stamps(image, tbl, n=4)
    assert isinstance(fig, Figure)
    assert len(_visible_axes(fig)) == 4
    titles = [ax.get_title() for ax in _visible_axes(fig)]
    # Sorted by S/N, highest first: 600/20, 650/25, 580/22, 610/30.
    assert [t.split("  ")[0] for t in titles] == ["id 1", "id 3", "id 2", "id 6"]
    # One error ellipse per panel with finite errors.
    assert all(len(ax.patches) == 1 for ax in _visible_axes(fig))


def test_plot_stamps_all_rows_table_order(result):
    image, tbl = result
    fig = plot_stamps(image, tbl, n=50, ncols=3, sort_by=None, error_scale=5)
    axes = _visible_axes(fig)
    assert len(axes) == len(tbl)
    assert axes[0].get_title() == "id 1  S/N 30"
    assert "EDGE" in axes[3].get_title()
    assert "no fit" in axes[4].get_title()
    assert len(axes[4].patches) == 0
    assert "(x5)" in fig._suptitle.get_text()


def test_plot_stamps_inputs(result, tmp_path):
    image, tbl = result
    mask = np.zeros(image.shape, dtype=bool)
    mask[:5] = True
    for data in (image * u.adu, NDData(image, mask=mask), np.ma.MaskedArray(image, mask)):
        fig = plot_stamps(data, tbl, n=2, fig=Figure())
        fig.savefig(tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0
    fig = plot_stamps(image, tbl[:0])
    assert fig.axes[0].texts[0].get_text() == "no sources"


def test_plot_stamps_shows_the_pixels_at_any_scale(result):
    # The image is read as MLPhotometry reads it (coerce_data, which may scale it by a
    # power of two internally); the stamps show the data's own values.
    image, tbl = result
    shown = []
    for data in (image, np.asarray(image, dtype=np.float64) * 2.0**40 * u.adu):
        fig = plot_stamps(data, tbl, n=1, sort_by=None, size=9, fig=Figure())
        shown.append(np.asarray(_visible_axes(fig)[0].images[0].get_array(), dtype=float))
    # Row 1 at (10.2, 12.4): the 9x9 stamp around pixel (10, 12).
    np.testing.assert_array_equal(shown[0], image[8:17, 6:15])
    np.testing.assert_array_equal(shown[1], shown[0] * 2.0**40)


def test_plot_stamps_row_without_a_position(result):
    image, tbl = result
    tbl = tbl.copy()
    tbl["x_init"][4] = tbl["y_init"][4] = np.nan  # no input position and no fit
    fig = plot_stamps(image, tbl, n=6, sort_by=None)
    axes = _visible_axes(fig)
    assert len(axes) == len(tbl)
    assert "no fit" in axes[4].get_title()
    assert np.all(np.isnan(np.asarray(axes[4].images[0].get_array(), dtype=float)))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 0}, "n must be a positive integer"),
    ({"size": 2}, "size must be an integer of at least 4"),
    ({"sort_by": "flux"}, "sort_by must be 'snr' or None"),
])
def test_plot_stamps_bad_options(result, kwargs, message):
    image, tbl = result
    with pytest.raises(ValueError, match=message):
        plot_stamps(image, tbl, **kwargs)


def test_plot_stamps_bad_inputs(result):
    image, tbl = result
    with pytest.raises(ValueError, match="data must be a 2-D image"):
        plot_stamps(image[None], tbl)
    with pytest.raises(ValueError, match="table has no column 'x_err'"):
        plot_stamps(image, tbl["id", "x_fit", "y_fit"])


@pytest.fixture(name="truth")
def fixture_truth(result):
    _, tbl = result
    # Reference rows in another order, plus one the table lacks.
    return QTable({"id": [6, 5, 4, 3, 2, 1, 99],
                   "flux": [600.0, 1.0, 310.0, 560.0, 640.0, 610.0, 5.0],
                   "flux_err": [10.0] * 7})


def test_plot_residuals(result, truth):
    _, tbl = result
    fig = plot_residuals(tbl, truth, nbins=2)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4
    ax_rel, _, ax_z, ax_zh = fig.axes
    assert "6 matched rows" in fig._suptitle.get_text()
    # Unflagged rows: ids 1, 2, 3, 6 (NO_SOURCE_NOISE does not exclude); flagged: id 4.
    labels = [t.get_text() for t in ax_z.get_legend().get_texts()]
    assert "unflagged (4)" in labels and "flagged (1)" in labels
    assert "N(0,1)" in [t.get_text() for t in ax_zh.get_legend().get_texts()]
    # z of id 1: (600 - 610) / 20.
    offsets = ax_z.collections[1].get_offsets()
    assert np.isclose(offsets[0][1], -0.5)
    assert ax_rel.get_xscale() == "log"


def test_plot_residuals_options(result, truth):
    _, tbl = result
    ref = truth.copy()
    ref.rename_column("id", "NUMBER")
    fig = plot_residuals(tbl, ref, match=("id", "NUMBER"), reference_flux_err="flux_err",
                         bad_flags=0, fig=Figure())
    offsets = fig.axes[2].collections[1].get_offsets()
    assert np.isclose(offsets[0][1], -10 / np.hypot(20, 10))
    labels = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert "unflagged (5)" in labels


def test_plot_residuals_units(result, truth):
    _, tbl = result
    qtbl = tbl.copy()
    qtbl["flux_fit"] = qtbl["flux_fit"] * u.adu
    qtbl["flux_err"] = qtbl["flux_err"] * u.adu
    ref = truth.copy()
    ref["flux"] = ref["flux"] * u.adu
    plot_residuals(qtbl, ref)
    ref["flux"] = ref["flux"].to(u.adu * 1000)  # convertible: fine
    plot_residuals(qtbl, ref)
    ref["flux"] = ref["flux"].value * u.s
    with pytest.raises(u.UnitsError):
        plot_residuals(qtbl, ref)
    with pytest.warns(AsidfePhotWarning, match="comparing the values as if they had the same"):
        plot_residuals(tbl, ref)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"match": "NUMBER"}, "table has no column 'NUMBER' to match on"),
    ({"match": ("id", "ref_id")}, "reference has no column 'ref_id'"),
    ({"match": 3}, "match must be a column name or a"),
    ({"reference_flux": "FLUX_AUTO"}, "reference has no column 'FLUX_AUTO'"),
    ({"flux": "flux_psf"}, "table has no column 'flux_psf'"),
    ({"nbins": 0}, "nbins must be a positive integer"),
])
def test_plot_residuals_bad_options(result, truth, kwargs, message):
    _, tbl = result
    with pytest.raises(ValueError, match=message):
        plot_residuals(tbl, truth, **kwargs)


def test_plot_residuals_bad_references(result):
    _, tbl = result
    with pytest.raises(ValueError, match="has duplicate values; cannot match rows"):
        plot_residuals(tbl, QTable({"id": [1, 1], "flux": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="no row of the table matches the reference"):
        plot_residuals(tbl, QTable({"id": [100, 101], "flux": [1.0, 2.0]}))


def test_plot_residuals_nothing_finite(result, truth):
    _, tbl = result
    tbl = tbl.copy()
    tbl["flux_fit"] = np.nan
    fig = plot_residuals(tbl, truth)
    assert "no data" in fig.axes[3].texts[0].get_text()


# --- plot_calibration ----------------------------------------------------------------------

@pytest.fixture(name="calib")
def fixture_calib():
    rng = np.random.default_rng(3)
    n = 2000
    tbl = QTable()
    tbl["flux_true"] = rng.uniform(100.0, 1000.0, n)
    tbl["flux_err"] = 0.05 * tbl["flux_true"]
    tbl["flux_fit"] = tbl["flux_true"] + rng.normal(0.0, tbl["flux_err"])
    tbl["x_true"] = rng.uniform(0, 100, n)
    tbl["x_err"] = np.full(n, 0.1)
    tbl["x_fit"] = tbl["x_true"] + rng.normal(0.0, 0.2, n)  # errors underestimated 2x
    tbl["flags"] = np.zeros(n, dtype=np.int32)
    tbl["flags"][:10] = flags.EDGE
    tbl["flux_fit"][:10] = 1e9  # flagged outliers, left out
    return tbl


def test_plot_calibration_single_and_multiple(calib):
    fig = plot_calibration(calib, "flux_fit", "flux_true", "flux_err")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    hist, cov = fig.axes
    text = hist.get_legend().get_texts()[0].get_text()
    assert "n=1990" in text
    std = float(text.split("std ")[1].split(",")[0])
    assert 0.9 < std < 1.1
    # Coverage curve of calibrated errors follows the diagonal.
    xdata, ydata = cov.lines[0].get_data()
    np.testing.assert_allclose(ydata, xdata, atol=0.05)
    fig = plot_calibration(calib, ["flux_fit", "x_fit"], ["flux_true", "x_true"],
                           ["flux_err", "x_err"], labels=["flux", "x"], fig=Figure())
    hist, cov = fig.axes
    assert len(hist.get_legend().get_texts()) == 3  # two quantities + N(0,1)
    xdata, ydata = cov.lines[1].get_data()
    at68 = np.argmin(np.abs(xdata - 0.68))
    assert ydata[at68] < 0.45  # overconfident: below the diagonal


def test_plot_calibration_reference_errors_and_all_rows(calib):
    calib["ref_err"] = np.full(len(calib), 0.0)
    fig = plot_calibration(calib, "x_fit", "x_true", "x_err", truth_error_col="ref_err",
                           bad_flags=0)
    assert "n=2000" in fig.axes[0].get_legend().get_texts()[0].get_text()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"value_col": "nope"}, "no column 'nope'"),
    ({"truth_col": ["flux_true", "x_true"]}, "truth_col has 2 entries"),
    ({"labels": ["a", "b"]}, "labels has 2 entries"),
    ({"value_col": [1, 2]}, "value_col must be a column name"),
    ({"zmax": 0}, "zmax must be positive"),
])
def test_plot_calibration_bad_input(calib, kwargs, match):
    args = {"value_col": "flux_fit", "truth_col": "flux_true", "error_col": "flux_err"} | kwargs
    with pytest.raises(ValueError, match=match):
        plot_calibration(calib, **args)


def test_plot_calibration_no_usable_row_and_units(calib):
    calib["flux_err"] = np.full(len(calib), np.nan)
    with pytest.raises(ValueError, match="no usable row"):
        plot_calibration(calib, "flux_fit", "flux_true", "flux_err")
    calib["flux_q"] = calib["x_fit"] * u.adu
    with pytest.warns(AsidfePhotWarning, match="same unit"):
        plot_calibration(calib, "flux_q", "x_true", "x_err")
