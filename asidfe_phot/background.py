"""
The 2-D background and background-noise maps the package estimates.

`~asidfe_phot.MLPhotometry` subtracts this background when none is given,
and the simulator that makes the training stamps estimates its frames'
backgrounds the same way, so training and inference see the same background
errors. Use it to reproduce what the package subtracted, or to give the same
background to another method.
"""

from asidfe_phot._background import estimate_background

__all__ = ["estimate_background"]
