"""
photutils 3.0's PSF user guide, run with only the class swapped.

The runnable examples of photutils 3.0.0's ``docs/user_guide/psf.rst`` (Copyright (c)
2011-2026 Photutils Developers, BSD 3-Clause licence) are vendored below, section by
section, as the guide has them (doctest prompts and ``print`` lines removed; plots not
run). Each section runs twice, in a namespace of its own, on the same data:

* as written (``from photutils.psf import PSFPhotometry, IterativePSFPhotometry``);
* with the import swapped, nothing else:
  ``from asidfe_phot import MLPhotometry as PSFPhotometry`` and
  ``from asidfe_phot import IterativeMLPhotometry as IterativePSFPhotometry``.

The tests then assert that the swapped script means the same: the same rows in the same
order with the same ids, forced positions held, groups, iterations, fluxes and positions
within tolerances derived from the image's S/N, model and residual images alike.

The "Bounded Model Parameters" section sets a model's ``bounds`` and calls no class;
`test_bounded_flux` runs its (400, 600) flux bounds (with initial fluxes inside them: from
the aperture sums photutils raises "Initial guess is outside of provided bounds" on this
image). Not vendored: ``fit_fwhm`` (a function, not a class a script swaps).
"""

import textwrap
import warnings

import numpy as np
import pytest

#: The guide's setup: ten CircularGaussianPRF sources (FWHM 2.7 px, flux 500-700) on a
#: 101x101 image with unit Gaussian noise, error = |noise| (as the guide has it).
SETUP = """
import numpy as np
from photutils.datasets import make_noise_image
from photutils.psf import CircularGaussianPRF, make_psf_model_image
psf_model = CircularGaussianPRF(flux=1, fwhm=2.7)
psf_shape = (9, 9)
n_sources = 10
shape = (101, 101)
data, true_params = make_psf_model_image(shape, psf_model, n_sources,
                                         model_shape=psf_shape,
                                         flux=(500, 700),
                                         min_separation=10, seed=0)
noise = make_noise_image(data.shape, mean=0, stddev=1, seed=0)
data += noise
error = np.abs(noise)
"""

#: The guide's sections, in its order, each continuing the namespace of the ones before.
SECTIONS = {
    "multiple_sources": """
        from photutils.detection import DAOStarFinder
        from photutils.psf import PSFPhotometry
        psf_model = CircularGaussianPRF(flux=1, fwhm=2.7)
        fit_shape = (5, 5)
        finder = DAOStarFinder(6.0, 2.0)
        psfphot = PSFPhotometry(psf_model, fit_shape, finder=finder,
                                aperture_radius=4)
        phot = psfphot(data, error=error)
        phot['x_fit'].info.format = '.4f'  # optional format
        phot['y_fit'].info.format = '.4f'
        phot['flux_fit'].info.format = '.4f'
        resid = psfphot.make_residual_image(data)
        """,
    "nddata": """
        from astropy.nddata import NDData, StdDevUncertainty
        uncertainty = StdDevUncertainty(error)
        nddata = NDData(data, uncertainty=uncertainty)
        phot2 = psfphot(nddata)
        """,
    "finder_results": """
        psfphot.finder_results['x_centroid'].info.format = '.4f'  # optional format
        psfphot.finder_results['y_centroid'].info.format = '.4f'  # optional format
        psfphot.finder_results['sharpness'].info.format = '.4f'  # optional format
        psfphot.finder_results['peak'].info.format = '.4f'
        psfphot.finder_results['flux'].info.format = '.4f'
        psfphot.finder_results['mag'].info.format = '.4f'
        psfphot.finder_results['daofind_mag'].info.format = '.4f'
        finder_results = psfphot.finder_results
        """,
    "single_source": """
        from astropy.table import QTable
        init_params = QTable()
        init_params['x'] = [63]
        init_params['y'] = [49]
        phot = psfphot(data, error=error, init_params=init_params)
        phot['x_fit'].info.format = '.4f'  # optional format
        phot['y_fit'].info.format = '.4f'
        phot['flux_fit'].info.format = '.4f'
        resid = psfphot.make_residual_image(data)
        """,
    "forced": """
        psf_model2 = CircularGaussianPRF(flux=1, fwhm=2.7)
        psf_model2.x_0.fixed = True
        psf_model2.y_0.fixed = True
        psfphot = PSFPhotometry(psf_model2, fit_shape, finder=finder,
                                aperture_radius=4)
        phot = psfphot(data, error=error, init_params=init_params)
        phot['flux_init'].info.format = '.4f'  # optional format
        phot['flux_fit'].info.format = '.4f'
        """,
    "grouping": """
        from photutils.psf import SourceGrouper
        grouper = SourceGrouper(min_separation=20)
        psfphot = PSFPhotometry(psf_model, fit_shape, finder=finder,
                                grouper=grouper, aperture_radius=4)
        phot = psfphot(data, error=error)
        """,
    "local_background": """
        from photutils.background import LocalBackground, MMMBackground
        bkgstat = MMMBackground()
        local_bkg_estimator = LocalBackground(5, 10, bkg_estimator=bkgstat)
        finder = DAOStarFinder(10.0, 2.0)
        psfphot = PSFPhotometry(psf_model, fit_shape, finder=finder,
                                grouper=grouper, aperture_radius=4,
                                local_bkg_estimator=local_bkg_estimator)
        phot = psfphot(data, error=error)
        phot['local_bkg'].info.format = '.4f'  # optional format
        """,
    "iterative": """
        from photutils.background import LocalBackground, MMMBackground
        from photutils.psf import IterativePSFPhotometry
        fit_shape = (5, 5)
        finder = DAOStarFinder(10.0, 2.0)
        bkgstat = MMMBackground()
        local_bkg_estimator = LocalBackground(5, 10, bkg_estimator=bkgstat)
        init_params = QTable()
        init_params['x'] = [54, 29, 80]
        init_params['y'] = [8, 26, 29]
        psfphot2 = IterativePSFPhotometry(psf_model, fit_shape, finder=finder,
                                          local_bkg_estimator=local_bkg_estimator,
                                          aperture_radius=4)
        phot = psfphot2(data, error=error, init_params=init_params)
        phot['x_fit'].info.format = '.4f'  # optional format
        phot['y_fit'].info.format = '.4f'
        phot['flux_fit'].info.format = '.4f'
        """,
}

#: The swap: the only edit made to the guide's code.
SWAP = {
    "from photutils.psf import PSFPhotometry":
        "from asidfe_phot import MLPhotometry as PSFPhotometry",
    "from photutils.psf import IterativePSFPhotometry":
        "from asidfe_phot import IterativeMLPhotometry as IterativePSFPhotometry",
}

#: What each section leaves to compare (copied: later sections reassign the names).
OUTPUTS = {"multiple_sources": ("phot", "resid"), "nddata": ("phot2",),
           "finder_results": ("finder_results",), "single_source": ("phot", "resid"),
           "forced": ("phot",), "grouping": ("phot",), "local_background": ("phot",),
           "iterative": ("phot", "psfphot2")}

# The tolerances, from the image's S/N. A CircularGaussianPRF of FWHM 2.7 px (sigma
# s = 1.147 px) under unit pixel noise has Fisher errors sigma_F = sqrt(4 pi) s = 4.1
# counts in flux and sqrt(8 pi) s^2 / F = 0.013 px in position at the faintest flux here
# (500). Both classes fit the same PSF model to the same pixels and differ only by their
# fit boxes and weights, so their estimates must agree well within one such sigma (their
# scatter about the truth, with the guide's error = |noise| weights, is several sigmas).
FLUX_SIGMA = np.sqrt(4 * np.pi) * 2.7 / 2.3548
POSITION_SIGMA = np.sqrt(8 * np.pi) * (2.7 / 2.3548) ** 2 / 500.0


def run_guide(swap):
    """Run the guide's sections in order; per section its outputs, or the exception."""
    namespace = {}
    exec(SETUP, namespace)  # noqa: S102 (the vendored guide, run as written)
    results = {}
    for name, code in SECTIONS.items():
        code = textwrap.dedent(code)
        if swap:
            for theirs, ours in SWAP.items():
                code = code.replace(theirs, ours)
        try:
            with warnings.catch_warnings():
                # The guide's prints aside, a warning is the script's; ours are compared
                # in their own tests. Keep them from turning into errors here.
                warnings.simplefilter("ignore")
                exec(code, namespace)  # noqa: S102
        except Exception as exc:  # noqa: BLE001 (reported by the test of that section)
            results[name] = exc
            continue
        results[name] = {key: _copy(namespace[key]) for key in OUTPUTS[name]}
    results["setup"] = {key: namespace[key] for key in ("data", "error", "true_params")}
    return results


def _copy(value):
    return value.copy() if hasattr(value, "copy") else value


@pytest.fixture(name="guide", scope="module")
def fixture_guide():
    """The guide run with photutils' classes and with ours."""
    return run_guide(swap=False), run_guide(swap=True)


def outputs(guide, section):
    theirs, ours = (run[section] for run in guide)
    assert not isinstance(theirs, Exception), f"photutils' own example failed: {theirs!r}"
    if isinstance(ours, Exception):
        raise ours
    return theirs, ours


def values(column):
    return np.asarray(getattr(column, "value", column), dtype=float)


def assert_same_sources(theirs, ours, *, positions=True):
    """Same rows, in order, same ids; fluxes and positions within the Fisher sigmas."""
    assert len(ours) == len(theirs)
    assert ours["id"].tolist() == theirs["id"].tolist()
    # The finder runs on our background-subtracted image: its centroids move by ~1e-4 px.
    for axis in ("x_init", "y_init"):
        np.testing.assert_allclose(values(ours[axis]), values(theirs[axis]), atol=1e-3)
    np.testing.assert_allclose(values(ours["flux_fit"]), values(theirs["flux_fit"]),
                               atol=FLUX_SIGMA)
    if positions:
        for axis in ("x_fit", "y_fit"):
            np.testing.assert_allclose(values(ours[axis]), values(theirs[axis]),
                                       atol=POSITION_SIGMA)
    assert np.all(np.isfinite(values(ours["flux_err"])) & (values(ours["flux_err"]) > 0))


def assert_residual_like(guide, section):
    """The residual images: the same shape, and noise at every fitted star in both."""
    (theirs, ours) = (run[section] for run in guide)
    data = guide[0]["setup"]["data"]
    assert ours["resid"].shape == theirs["resid"].shape == data.shape
    for x, y in zip(values(ours["phot"]["x_fit"]), values(ours["phot"]["y_fit"]), strict=True):
        box = np.s_[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3]
        # A 5x5 box of unit noise: rms ~1; a badly subtracted 500-count star leaves ~10x that.
        rms_ours = np.sqrt(np.mean(np.square(ours["resid"][box])))
        rms_theirs = np.sqrt(np.mean(np.square(theirs["resid"][box])))
        assert rms_ours < max(2.0, 1.5 * rms_theirs)
        assert np.abs(data[box]).max() > 20 * rms_ours   # the star was there, and is gone


def test_multiple_sources(guide):
    theirs, ours = outputs(guide, "multiple_sources")
    assert len(ours["phot"]) == 10
    assert_same_sources(theirs["phot"], ours["phot"])
    assert_residual_like(guide, "multiple_sources")


def test_nddata_input(guide):
    """NDData with a StdDevUncertainty gives what data and error= gave."""
    theirs, ours = outputs(guide, "nddata")
    _, first = outputs(guide, "multiple_sources")
    assert_same_sources(theirs["phot2"], ours["phot2"])
    for name in ("x_fit", "y_fit", "flux_fit", "flux_err", "flags"):
        np.testing.assert_array_equal(values(ours["phot2"][name]), values(first["phot"][name]))


def test_finder_results(guide):
    theirs, ours = outputs(guide, "finder_results")
    assert len(ours["finder_results"]) == len(theirs["finder_results"])


def test_single_source(guide):
    theirs, ours = outputs(guide, "single_source")
    assert len(ours["phot"]) == 1
    assert_same_sources(theirs["phot"], ours["phot"])
    assert_residual_like(guide, "single_source")


def test_forced_photometry(guide):
    """Positions held by the model's ``fixed``: x_fit == x_init exactly; the flux fitted."""
    theirs, ours = outputs(guide, "forced")
    tbl = ours["phot"]
    assert_same_sources(theirs["phot"], tbl)
    assert values(tbl["x_fit"]).tolist() == values(tbl["x_init"]).tolist() == [63.0]
    assert values(tbl["y_fit"]).tolist() == values(tbl["y_init"]).tolist() == [49.0]
    # flux_init: the aperture_radius=4 sum at the position (ours after subtracting the
    # background it estimated, local_bkg per pixel, over the aperture's 16 pi pixels).
    aperture_area = np.pi * 4**2
    np.testing.assert_allclose(values(tbl["flux_init"]) + aperture_area
                               * values(tbl["local_bkg"]),
                               values(theirs["phot"]["flux_init"]), atol=1.0)


def test_bounded_flux(guide):
    """The guide's bounds, run: photutils holds every flux within them."""
    from astropy.table import QTable
    from photutils.detection import DAOStarFinder
    from photutils.psf import CircularGaussianPRF, PSFPhotometry

    from asidfe_phot import MLPhotometry

    data, error = (guide[0]["setup"][k] for k in ("data", "error"))
    psf_model3 = CircularGaussianPRF(flux=1, fwhm=2.7)
    psf_model3.flux.bounds = (400, 600)
    sources = DAOStarFinder(6.0, 2.0)(data)
    init_params = QTable({"x": sources["x_centroid"], "y": sources["y_centroid"],
                          "flux": np.full(len(sources), 500.0)})
    fluxes = []
    for cls in (PSFPhotometry, MLPhotometry):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # photutils: "may not have converged"
            tbl = cls(psf_model3, (5, 5), aperture_radius=4)(data, error=error,
                                                              init_params=init_params)
        fluxes.append(values(tbl["flux_fit"]))
    theirs, ours = fluxes
    assert np.all((theirs >= 400) & (theirs <= 600))
    assert np.all((ours >= 400) & (ours <= 600))


def test_grouping(guide):
    theirs, ours = outputs(guide, "grouping")
    assert_same_sources(theirs["phot"], ours["phot"])
    for name in ("group_id", "group_size"):
        assert ours["phot"][name].tolist() == theirs["phot"][name].tolist()


def test_local_background(guide):
    """
    The annulus background of each source: photutils' statistic of the annulus; ours the
    2-D background plus the annulus statistic after it, which agree to the statistic's
    own standard error (1.25 / sqrt(235 annulus pixels) = 0.08 of unit noise).
    """
    theirs, ours = outputs(guide, "local_background")
    assert_same_sources(theirs["phot"], ours["phot"])
    np.testing.assert_allclose(values(ours["phot"]["local_bkg"]),
                               values(theirs["phot"]["local_bkg"]), atol=0.08)


def test_iterative(guide):
    """Three sources given, the finder finds the other seven in the residual."""
    theirs, ours = outputs(guide, "iterative")
    assert_same_sources(theirs["phot"], ours["phot"])
    assert ours["phot"]["iter_detected"].tolist() == theirs["phot"]["iter_detected"].tolist()
    assert ours["phot"]["iter_detected"].tolist() == [1, 1, 1] + [2] * 7
    # The model image of all ten sources holds their fluxes.
    model = ours["psfphot2"].make_model_image(guide[0]["setup"]["data"].shape)
    np.testing.assert_allclose(model.sum(), values(ours["phot"]["flux_fit"]).sum(), rtol=1e-3)
