"""Shared by the MLPhotometry test modules: expected columns, comparisons, the reference run."""

import astropy.units as u
import numpy as np
import pytest
from astropy.table import QTable
from numpy.testing import assert_allclose, assert_array_equal

# photutils' PSFPhotometry columns, in its order (those MLPhotometry has).
EXPECTED_COLUMNS = ["id", "group_id", "group_size", "local_bkg", "x_init", "y_init", "x_fit",
                    "y_fit", "flux_fit", "x_err", "y_err", "flux_err", "qfit", "cfit", "flags"]
RESULT_COLUMNS = EXPECTED_COLUMNS[6:12]

# photutils' PSFPhotometry aliases, written out (not imported) so a change is noticed.
POSITION_ALIASES = [("x_init", "y_init"), ("xinit", "yinit"), ("x", "y"), ("x_0", "y_0"),
                    ("x0", "y0"), ("xcentroid", "ycentroid"), ("x_centroid", "y_centroid"),
                    ("x_peak", "y_peak"), ("xcen", "ycen"), ("x_cen", "y_cen"),
                    ("xpos", "ypos"), ("x_pos", "y_pos"), ("x_fit", "y_fit"), ("xfit", "yfit")]


def values(col):
    return np.asarray(u.Quantity(col).value if hasattr(col, "unit") else col, dtype=np.float64)


def assert_same_results(tbl, ref, rtol=0.0, atol=0.0, columns=RESULT_COLUMNS):
    """Fitted columns of two result tables agree (NaNs in the same places)."""
    assert len(tbl) == len(ref)
    for name in columns:
        assert_allclose(values(tbl[name]), values(ref[name]), rtol=rtol, atol=atol,
                        equal_nan=True, err_msg=name)
    assert_array_equal(tbl["flags"], ref["flags"])


@pytest.fixture(name="ref", scope="module")
def fixture_ref(phot, field):
    """Results for the star field with the true error map (the reference run)."""
    image, truth, meta = field
    init = QTable({"x_init": np.array(truth["x"]), "y_init": np.array(truth["y"])})
    return phot(image, error=meta["noise"], init_params=init)
