"""Warnings and errors raised by asidfe_phot."""

from astropy.utils.exceptions import AstropyUserWarning

__all__ = ["AsidfePhotWarning", "FlaggedSourcesWarning", "NoSourceNoiseWarning",
           "TooFewPSFStarsWarning", "PSFModelWarning", "GPUProviderWarning", "ModelError"]


class AsidfePhotWarning(AstropyUserWarning):
    """Base class of asidfe_phot warnings."""


class FlaggedSourcesWarning(AsidfePhotWarning):
    """Some sources were flagged; see the ``flags`` column (one warning per call)."""


class NoSourceNoiseWarning(AsidfePhotWarning):
    """The error map lacks the sources' Poisson noise, so bright sources' errors are too small."""


class TooFewPSFStarsWarning(AsidfePhotWarning):
    """``psf_model="auto"`` found fewer good stars than it wants for an ePSF."""


class PSFModelWarning(AsidfePhotWarning):
    """The PSF model describes the image's point sources too poorly to be used."""


class GPUProviderWarning(AsidfePhotWarning):
    """A GPU provider was asked for, or installed, but the network runs on the CPU."""


class ModelError(ValueError):
    """A model file is missing, corrupt, or does not follow the preprocessing contract."""
