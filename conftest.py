"""The training and evaluation packages are not installed: make them importable (for
training/tests and evaluation/tests), after site-packages so that the installed asidfe_phot
(with its packaged models) is the one the tests use."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[0])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)
