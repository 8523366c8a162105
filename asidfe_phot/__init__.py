"""
asidfe_phot: machine-learning photometry with calibrated uncertainties.

A two-step mean-variance estimation (TS-MVE) CNN (Stoppa et al. 2023,
AutoSourceID-FeatureExtractor) predicts flux, sub-pixel centre and their
1-sigma uncertainties from 32x32 stamps, through onnxruntime.
"""

try:
    from asidfe_phot.version import version as __version__
except ImportError:  # not installed (source checkout without a build)
    # The same fallback as setuptools_scm's (pyproject.toml), so both agree.
    __version__ = "0.1.dev0"

from asidfe_phot.flags import decode_flags  # noqa: F401
from asidfe_phot.iterative import IterativeMLPhotometry  # noqa: F401
from asidfe_phot.photometry import MLPhotometry  # noqa: F401

__all__ = ["MLPhotometry", "IterativeMLPhotometry", "decode_flags", "__version__"]
