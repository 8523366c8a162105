"""The training package is not installed: make it importable, after site-packages so the
installed asidfe_phot (with its packaged models) is the one the tests use."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)
