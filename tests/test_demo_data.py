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


def test_bundled_model_agrees_with_sourceextractor_on_real_frame():
    """End to end on a real ESO NTT frame: compact, clean sources agree with SourceExtractor."""
    import warnings

    from scipy.stats import spearmanr

    from asidfe_phot import MLPhotometry
    from asidfe_phot.exceptions import AsidfePhotWarning

    data, _, cat = load_demo_image()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AsidfePhotWarning)
        tbl = MLPhotometry()(data, init_params=cat)
    np.testing.assert_array_equal(tbl["id"], cat["id"])
    # Clean, compact (point-like) and unflagged sources with a good AUTO flux.
    compact = np.asarray(cat["FLUX_RADIUS"]) < 3.0
    clean = (np.asarray(cat["FLAGS"]) == 0) & compact & (np.asarray(tbl["flags"]) == 0)
    clean &= np.asarray(cat["FLUX_AUTO"]) > 10 * np.asarray(cat["FLUXERR_AUTO"])
    assert clean.sum() >= 8
    flux = np.asarray(tbl["flux_fit"])[clean]
    auto = np.asarray(cat["FLUX_AUTO"])[clean]
    assert spearmanr(flux, auto).statistic > 0.9
    # The total flux of a point source: within 30 % of FLUX_AUTO (which misses its wings).
    assert 0.8 < np.median(flux / auto) < 1.3
    shift = np.hypot(np.asarray(tbl["x_fit"] - cat["XWIN_IMAGE"].value)[clean],
                     np.asarray(tbl["y_fit"] - cat["YWIN_IMAGE"].value)[clean])
    assert np.median(shift) < 0.3
