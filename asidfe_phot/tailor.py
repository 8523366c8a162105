"""
A model tailored to the user's own frame (needs the ``train`` extra: PyTorch).

The shipped network is fine-tuned on stars of the frame's own PSF injected into the frame
(its sky, noise, galaxies and neighbours), and its sigmas are recalibrated on more of them;
see `asidfe_phot.training.tailor` (``training/tailor.py`` in a source checkout) for the
recipe. The result is a model directory for ``MLPhotometry(model=DIR)`` and ``--model DIR``.

This is the one part of the package that trains: it imports the training code, and with
it PyTorch, only when called.
"""

__all__ = ["tailor_model"]

#: The message when PyTorch is missing.
INSTALL_TRAIN = ("tailoring trains a network and needs PyTorch: install the train extra, "
                 "pip install 'asidfe_phot[train]' (for a CPU-only PyTorch add "
                 "--extra-index-url https://download.pytorch.org/whl/cpu)")


def _has_torch():
    """Whether PyTorch can be imported (found, not imported: inference never loads it)."""
    from importlib.util import find_spec

    try:
        return find_spec("torch") is not None
    except (ImportError, ValueError):   # ValueError: a module set to None in sys.modules
        return False


def _training_tailor():
    if not _has_torch():
        raise ImportError(INSTALL_TRAIN)
    try:
        from asidfe_phot.training import tailor
    except ModuleNotFoundError as exc:
        if exc.name != "asidfe_phot.training":
            raise
        # A source checkout whose package is not installed: training/ is beside it.
        from training import tailor

    return tailor


def tailor_model(image, out, *, hdu=None, gain=None, saturation=None, psf_model="auto",
                 parent=None, stamps=None, samples=None, seed=None, quick=False, log=print):
    """
    Tailor the shipped model (or ``parent``) to the FITS frame ``image``.

    Parameters
    ----------
    image : path-like
        The frame (FITS).
    out : path-like
        Working directory; the model is written to ``out/model``. Rerunning the
        same call resumes (the tailored set and a finished training are kept).
    hdu : int, optional
        The image HDU (default: the first 2-D image).
    gain, saturation : float, optional
        Electrons per data unit and saturation level; default the header's
        GAIN and SATURATE (the gain, else sky / rms^2 as MLPhotometry takes it).
    psf_model : "auto", str or photutils PSF model, optional
        The frame's PSF: ``"auto"`` (the ePSF MLPhotometry builds) or a PSFEx
        ``.psf`` file or a photutils model.
    parent : str or path-like, optional
        The model to fine-tune (a PSF-conditioned one); default the shipped model.
    stamps, samples, seed : int, optional
        Size of the tailored training set, the training budget (stamps seen)
        and the seed; defaults in ``TAILOR`` of the training module.
    quick : bool, optional
        A tiny set and budget (tests, trying the command).
    log : callable, optional
        Receives progress lines.

    Returns
    -------
    dict
        The new model's card (``tailored_validation`` holds the before/after
        artificial-star statistics per S/N bin).

    Raises
    ------
    ImportError
        Without PyTorch, naming the install command.
    """
    tailor = _training_tailor()
    config = dict(tailor.QUICK if quick else tailor.TAILOR)
    for key, value in (("stamps", stamps), ("samples", samples), ("seed", seed)):
        if value is not None:
            config[key] = int(value)
    return tailor.tailor(image, out, hdu=hdu, gain=gain, saturation=saturation,
                         psf_model=psf_model, parent=parent, config=config, log=log)


def _main(argv, prog):
    """``asidfe-phot tailor``: `tailor_model` from the shell; the exit status."""
    import sys

    from asidfe_phot._fitsio import FITSReadError

    try:
        training_tailor = _training_tailor()
    except ImportError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        training_tailor.main(argv, prog=prog)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except (ValueError, FITSReadError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
