"""Tests of the embedded demo data (asidfe_phot.datasets.load_demo_image)."""

import hashlib
from importlib import resources

import astropy.units as u
import numpy as np
from astropy.io import fits

from asidfe_phot.datasets import load_demo_image


def test_load_demo_image():
    data, header, cat = load_demo_image()
    assert data.shape == (256, 256)
    assert data.dtype == np.float32 and data.dtype.isnative
    assert 6700 < np.median(data) < 7000  # unsubtracted sky, ~6850 ADU
    assert isinstance(header, fits.Header)
    assert header["INSTRUME"] == "EMMI"
    assert not any(card.image.startswith("ESO-LOG") for card in header.cards)
    assert len(cat) == 65
    for name in ("id", "xcentroid", "ycentroid", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE",
                 "FLUX_AUTO", "FLUXERR_AUTO", "FLUX_APER", "FLAGS"):
        assert name in cat.colnames
    # Positions are 0-based: SourceExtractor's first object is at X_IMAGE = 165.1449.
    assert u.allclose(cat["X_IMAGE"][0], 164.1449 * u.pix)
    assert u.allclose(cat["xcentroid"], cat["X_IMAGE"])
    np.testing.assert_array_equal(cat["id"], cat["NUMBER"])
    assert "1-based to 0-based" in cat.meta["conversion"]


def test_demo_files_provenance():
    root = resources.files("asidfe_phot.data")
    image = (root / "sep_image.fits").read_bytes()
    _, _, cat = load_demo_image()
    assert hashlib.sha256(image).hexdigest() == cat.meta["image_sha256"]
