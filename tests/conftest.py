"""Shared, deterministic fixtures for the asidfe_phot test suite."""

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.table import QTable
from astropy.wcs import WCS

from asidfe_phot import MLPhotometry
from asidfe_phot.datasets import make_star_field

#: The star field used by most photometry tests: small, fixed seed, gain 2 ADU/e.
FIELD_SHAPE = (96, 96)
FIELD_GAIN = 2.0

#: Environment variable naming the folder of the real telescope frames (``shared/real``),
#: as in ``evaluation``; tox passes it through.
REAL_DATA_VARIABLE = "ASIDFE_REAL_DATA"


def _readonly(array):
    array = np.array(array)
    array.flags.writeable = False  # photometry must never modify its inputs
    return array


@pytest.fixture(name="phot", scope="session")
def fixture_phot():
    """One MLPhotometry instance (default model, CPU) shared by the whole session."""
    return MLPhotometry()


@pytest.fixture(name="field", scope="session")
def fixture_field():
    """
    A 96x96 Moffat star field, 12 stars kept 16 px from the edges.

    Returns ``(image, truth, meta)`` as `asidfe_phot.datasets.make_star_field`
    does; ``image`` is read-only.
    """
    image, truth, meta = make_star_field(FIELD_SHAPE, 12, flux_range=(2e3, 1e5), sky=200.0,
                                         gain=FIELD_GAIN, read_noise=5.0, border=16, seed=42)
    meta = dict(meta, noise=_readonly(meta["noise"]), background=_readonly(meta["background"]))
    return _readonly(image), truth, meta


@pytest.fixture(name="image", scope="session")
def fixture_image(field):
    """The star field image (ADU, float32, read-only)."""
    return field[0]


@pytest.fixture(name="error", scope="session")
def fixture_error(field):
    """The true per-pixel 1-sigma noise of the star field (ADU, read-only)."""
    return field[2]["noise"]


@pytest.fixture(name="init")
def fixture_init(field):
    """A fresh ``x_init, y_init`` table at the true star positions (photutils style)."""
    truth = field[1]
    return QTable({"x_init": np.array(truth["x"]), "y_init": np.array(truth["y"])})


@pytest.fixture(name="wcs", scope="session")
def fixture_wcs():
    """A simple TAN WCS for the star field (0.5 arcsec pixels)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [48.5, 48.5]
    wcs.wcs.cdelt = [-0.5 / 3600, 0.5 / 3600]
    return wcs


@pytest.fixture(name="real_data", scope="session")
def fixture_real_data():
    """
    The folder of the real frames: ``$ASIDFE_REAL_DATA``, else ``../shared/real`` beside
    the repository (as ``evaluation.real_data_dir``).

    Skips, saying where it looked and naming ``ASIDFE_REAL_DATA``, when the folder is
    absent at the default location; fails when ``ASIDFE_REAL_DATA`` names a missing folder.
    """
    given = os.environ.get(REAL_DATA_VARIABLE)
    path = Path(given) if given else Path(__file__).resolve().parents[2] / "shared" / "real"
    if not path.is_dir():
        if given:
            pytest.fail(f"{REAL_DATA_VARIABLE}={path} is not a folder")
        pytest.skip(reason=f"real frames not found at {path}; set {REAL_DATA_VARIABLE} to the "
                           "folder holding them (the project's shared/real)")
    return path
