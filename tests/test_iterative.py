"""IterativeMLPhotometry: photutils' IterativePSFPhotometry with MLPhotometry's passes."""

import numpy as np
import pytest
from astropy.table import QTable
from photutils.datasets import make_noise_image
from photutils.detection import DAOStarFinder
from photutils.psf import CircularGaussianPRF, IterativePSFPhotometry, SourceGrouper
from scipy.spatial import cKDTree

from asidfe_phot import IterativeMLPhotometry, MLPhotometry
from asidfe_phot.exceptions import PSFModelWarning

FWHM = 2.7
BRIGHT, FAINT = 8000.0, 1000.0
#: Fisher bound of a flux for a Gaussian PSF (sigma s = FWHM / 2.355) under unit pixel noise:
#: sqrt(4 pi) s, 4.1 counts. Our iterations must land within a few of these.
FLUX_SIGMA = np.sqrt(4 * np.pi) * FWHM / 2.3548


def hidden_neighbours_field(n_rows=3, n_cols=6, every=3, separation=5.0, seed=1):
    """
    A grid of bright stars (8000), every ``every``-th with a faint neighbour (1000)
    ``separation`` px away that DAOStarFinder misses next to it; unit Gaussian noise.

    Returns ``(data, truth)``, truth an (N, 3) array of x, y, flux.
    """
    rng = np.random.default_rng(seed)
    shape = (24 + 40 * (n_rows - 1) + 8, 32 + 25 * (n_cols - 1))
    psf = CircularGaussianPRF(flux=1, fwhm=FWHM)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    rows = []
    centres = [(16 + 25 * i, 16 + 40 * j) for j in range(n_rows) for i in range(n_cols)]
    for k, (x, y) in enumerate(centres):
        x, y = x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)
        rows.append((x, y, BRIGHT))
        if k % every == 0:
            angle = rng.uniform(0, 2 * np.pi)
            rows.append((x + separation * np.cos(angle), y + separation * np.sin(angle), FAINT))
    truth = np.array(rows)
    data = np.zeros(shape)
    for x, y, flux in truth:
        data += psf.evaluate(xx, yy, flux, x, y, FWHM)
    data += make_noise_image(shape, mean=0, stddev=1, seed=0)
    return data, truth


@pytest.fixture(name="hidden", scope="module")
def fixture_hidden():
    """The field, its truth, and photutils' IterativePSFPhotometry result on it."""
    data, truth = hidden_neighbours_field()
    psf = CircularGaussianPRF(flux=1, fwhm=FWHM)
    reference = IterativePSFPhotometry(psf, (5, 5), finder=DAOStarFinder(10.0, FWHM),
                                       aperture_radius=4)(data, error=np.ones_like(data))
    return data, truth, reference


def finder():
    return DAOStarFinder(10.0, FWHM)


def matched(tbl, truth, radius=0.5):
    """Index of the row of ``tbl`` within ``radius`` px of each true source (-1: none)."""
    tree = cKDTree(np.c_[np.asarray(tbl["x_fit"]), np.asarray(tbl["y_fit"])])
    dist, index = tree.query(truth[:, :2], distance_upper_bound=radius)
    return np.where(np.isfinite(dist), index, -1)


def test_one_pass_misses_the_neighbours(hidden):
    """The premise: a single MLPhotometry pass with the finder sees the bright stars only."""
    data, truth, reference = hidden
    single = MLPhotometry(CircularGaussianPRF(flux=1, fwhm=FWHM), finder=finder())(
        data, error=np.ones_like(data))
    n_bright = int(np.count_nonzero(truth[:, 2] == BRIGHT))
    assert len(single) == n_bright < len(truth)
    # photutils' first pass sees the same, and its iterations find every neighbour.
    assert np.count_nonzero(reference["iter_detected"] == 1) == n_bright
    assert len(reference) == len(truth)


@pytest.mark.parametrize("mode", ["new", "all"])
def test_iterations_find_the_hidden_neighbours(hidden, mode):
    data, truth, reference = hidden
    phot = IterativeMLPhotometry(CircularGaussianPRF(flux=1, fwhm=FWHM), (5, 5),
                                 finder=finder(), mode=mode)
    tbl = phot(data, error=np.ones_like(data))
    # photutils' count, pass by pass.
    assert len(tbl) == len(reference)
    assert (np.bincount(tbl["iter_detected"]).tolist()
            == np.bincount(reference["iter_detected"]).tolist())
    assert tbl.meta["iter_nsources"] == np.bincount(reference["iter_detected"])[1:].tolist()
    assert tbl["id"].tolist() == list(range(1, len(tbl) + 1))
    # Each true source found once, where it is.
    index = matched(tbl, truth)
    assert np.all(index >= 0)
    assert len(set(index.tolist())) == len(truth)
    faint = truth[:, 2] == FAINT
    assert np.all(tbl["iter_detected"][index[faint]] == 2)
    # Fluxes within 4 sigma of the truth by their own errors; 'all' measures the neighbours
    # together on the data (no residual holes), near the Fisher bound.
    flux = np.asarray(tbl["flux_fit"])[index]
    err = np.asarray(tbl["flux_err"])[index]
    assert np.all(np.abs(flux - truth[:, 2]) < 4 * err)
    if mode == "all":
        assert np.all(np.abs(flux[faint] - FAINT) < 5 * FLUX_SIGMA)
        assert np.all(err[faint] < 5 * FLUX_SIGMA)
    # The neighbours' fluxes are photutils' to within one Fisher sigma (same pixels, same
    # model: only the fit boxes and the order of the fits differ).
    theirs = np.asarray(reference["flux_fit"])[matched(reference, truth)[faint]]
    assert np.all(np.abs(flux[faint] - theirs) < FLUX_SIGMA)


def test_auto_iterates_with_the_first_pass_epsf():
    """psf_model="auto": the ePSF built from the image serves the residual passes."""
    data, truth = hidden_neighbours_field()
    phot = IterativeMLPhotometry("auto", finder=finder(), mode="all")
    tbl = phot(data, error=np.ones_like(data))
    assert tbl.meta["psf_used"] and tbl.meta["psf_model"] == "auto"
    assert len(tbl) == len(truth)
    assert np.all(matched(tbl, truth) >= 0)
    # The residual of all sources is noise at the stars (1 % of the bright flux at most).
    residual = phot.make_residual_image(data)
    assert residual.shape == data.shape
    for x, y, _ in truth:
        core = residual[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3]
        assert abs(core.sum()) < 0.01 * BRIGHT
    assert phot.make_model_image(data.shape).sum() == pytest.approx(truth[:, 2].sum(),
                                                                    rel=0.01)


def test_no_psf_to_subtract_is_said():
    """
    The issue: the swap found 3 sources instead of 10, silently. An image on which
    "auto" builds no ePSF cannot be iterated: one pass, and a warning that says why.
    """
    data, truth = hidden_neighbours_field(n_rows=1, n_cols=6)   # 6 bright stars: no ePSF
    phot = IterativeMLPhotometry(finder=finder())
    with pytest.warns(PSFModelWarning, match="cannot be subtracted.*give a psf_model"):
        tbl = phot(data, error=np.ones_like(data))
    assert set(tbl["iter_detected"].tolist()) == {1}
    assert tbl.meta["iter_nsources"] == [len(tbl)]


def test_maxiters_one_is_one_mlphotometry_call(hidden):
    data, truth, _ = hidden
    psf = CircularGaussianPRF(flux=1, fwhm=FWHM)
    tbl = IterativeMLPhotometry(psf, finder=finder(), maxiters=1)(data, error=np.ones_like(data))
    single = MLPhotometry(psf, finder=finder())(data, error=np.ones_like(data))
    assert tbl.colnames == [*single.colnames[:3], "iter_detected", *single.colnames[3:]]
    for name in single.colnames:
        np.testing.assert_array_equal(np.asarray(tbl[name]), np.asarray(single[name]))
    assert set(tbl["iter_detected"].tolist()) == {1}


def test_new_mode_numbers_ids_and_groups_after_the_earlier_passes():
    """As photutils: the later passes' ids and group_ids continue after the earlier ones."""
    data, truth = hidden_neighbours_field(separation=6.0)
    phot = IterativeMLPhotometry(CircularGaussianPRF(flux=1, fwhm=FWHM), finder=finder(),
                                 grouper=SourceGrouper(min_separation=8))
    init = QTable({"id": np.arange(101, 101 + 18), "x": truth[truth[:, 2] == BRIGHT, 0],
                   "y": truth[truth[:, 2] == BRIGHT, 1]})
    tbl = phot(data, error=np.ones_like(data), init_params=init)
    first = tbl["iter_detected"] == 1
    assert tbl["id"][first].tolist() == init["id"].tolist()
    assert tbl["id"][~first].tolist() == list(range(119, 119 + np.count_nonzero(~first)))
    assert tbl["group_id"][~first].min() > tbl["group_id"][first].max()
    assert tbl.colnames.index("iter_detected") == tbl.colnames.index("group_size") + 1
    # The last result back as init_params (photutils' method), ids renumbered.
    init_next = phot.results_to_init_params()
    assert len(init_next) == len(tbl)
    assert init_next["id"].tolist() == list(range(1, len(tbl) + 1))
    assert len(phot.decode_flags()) == len(tbl)


def test_string_ids_are_refused():
    data, truth = hidden_neighbours_field(n_rows=1, n_cols=2)
    phot = IterativeMLPhotometry(CircularGaussianPRF(flux=1, fwhm=FWHM), finder=finder())
    init = QTable({"id": ["a", "b"], "x": truth[:2, 0], "y": truth[:2, 1]})
    with pytest.raises(ValueError, match="'id' must hold integers"):
        phot(data, init_params=init)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"finder": None}, ValueError, "finder cannot be None"),
    ({"psf_model": None}, ValueError, "psf_model=None has none"),
    ({"maxiters": 0}, ValueError, "maxiters must be a strictly positive integer"),
    ({"maxiters": 2.5}, ValueError, "maxiters must be a strictly positive integer"),
    ({"maxiters": True}, ValueError, "maxiters must be a strictly positive integer"),
    ({"mode": "some"}, ValueError, "mode must be 'new' or 'all'"),
    ({"sub_shape": 4}, ValueError, "sub_shape must be an odd positive integer"),
    ({"sub_shape": (5, 5, 5)}, ValueError, "sub_shape must be an odd positive integer"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
])
def test_bad_settings_are_refused(kwargs, error, match):
    settings = {"psf_model": CircularGaussianPRF(fwhm=FWHM), "finder": finder(), **kwargs}
    with pytest.raises(error, match=match):
        IterativeMLPhotometry(**settings)


def test_no_results_yet():
    phot = IterativeMLPhotometry(CircularGaussianPRF(fwhm=FWHM), finder=finder())
    assert phot.results is None
    assert phot.results_to_init_params() is None
    with pytest.raises(ValueError, match="no results yet"):
        phot.make_model_image((8, 8))
    with pytest.raises(ValueError, match="no results yet"):
        phot.decode_flags()
    assert "IterativeMLPhotometry(maxiters=3, mode='new'" in repr(phot)


def test_photutils_keywords_in_photutils_order():
    """A script's keywords for IterativePSFPhotometry all exist here, positional ones too."""
    import inspect

    theirs = inspect.signature(IterativePSFPhotometry).parameters
    ours = inspect.signature(IterativeMLPhotometry).parameters
    assert [name for name in theirs if name not in ours] == []
    positional = [n for n, p in theirs.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD] == positional


def test_localbkg_estimator_is_the_deprecated_spelling():
    from astropy.utils.exceptions import AstropyDeprecationWarning
    from photutils.background import LocalBackground

    with pytest.warns(AstropyDeprecationWarning, match="localbkg_estimator"):
        phot = IterativeMLPhotometry(CircularGaussianPRF(fwhm=FWHM), finder=finder(),
                                     localbkg_estimator=LocalBackground(5, 10))
    assert isinstance(phot.photometry.local_bkg_estimator, LocalBackground)
