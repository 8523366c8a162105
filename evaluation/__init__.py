"""
Measuring models: side-by-side evaluations, baselines, benchmarks and the docs' tables.

Dependencies point one way: ``evaluation`` -> ``training`` -> ``asidfe_phot``.
Nothing here makes weights; ``training/`` does.
"""

import os
from pathlib import Path

#: Environment variable naming the folder of the real telescope frames (``shared/real``).
REAL_DATA_VARIABLE = "ASIDFE_REAL_DATA"


def real_data_dir():
    """
    The folder of the real frames: ``$ASIDFE_REAL_DATA``, else ``../shared/real`` beside
    the repository (where the project hands them out).
    """
    given = os.environ.get(REAL_DATA_VARIABLE)
    if given:
        return Path(given)
    return Path(__file__).resolve().parents[2] / "shared" / "real"
