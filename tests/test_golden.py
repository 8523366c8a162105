"""
Golden regression test: the bundled default model on the bundled demo frame.

``MLPhotometry()(image, init_params=catalog)`` on `asidfe_phot.datasets.load_demo_image`
(and the same with ``psf_model=None`` and with an analytic PSF, see
``tests/data/make_golden.py``) must reproduce the tables stored in ``tests/data/``:
fluxes and uncertainties to 1e-4 (relative), positions to 1e-4 px, flags exactly. A
retrained model, a new onnxruntime or a change of the preprocessing that moves the
numbers fails here, even where the accuracy tests' wider bounds still pass.

When the numbers are meant to change (a new or recalibrated model, a deliberate change of
the preprocessing or the PSF fit), regenerate the tables from a clean checkout with the
package installed, and commit them with that change::

    python tests/data/make_golden.py
"""

import importlib.util
from pathlib import Path

import pytest
from astropy.table import Table

_SPEC = importlib.util.spec_from_file_location(
    "make_golden", Path(__file__).resolve().parent / "data" / "make_golden.py"
)
make_golden = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(make_golden)


@pytest.mark.parametrize("case", list(make_golden.CASES))
def test_demo_frame_matches_the_golden_table(case):
    golden = Table.read(make_golden.golden_path(case))
    tbl = make_golden.measure(case)
    problems = make_golden.compare(tbl, golden)
    assert not problems, (
        f"{case}: the demo frame's photometry differs from {make_golden.golden_path(case).name}"
        f" ({'; '.join(problems)}). If the change is intended, regenerate the tables with "
        "`python tests/data/make_golden.py` and commit them."
    )


def test_golden_tables_record_their_provenance():
    for case in make_golden.CASES:
        meta = Table.read(make_golden.golden_path(case)).meta
        assert meta["case"] == case
        assert meta["regenerate"] == "python tests/data/make_golden.py"
        assert len(meta["model_sha256"]) == 64
