"""
Classical reference photometry to compare MLPhotometry with.

- `run_source_extractor`: the real SourceExtractor binary (Bertin & Arnouts
  1996; Debian package ``source-extractor``, command ``source-extractor``,
  older installs ``sex``) on a 2-D array: FLUX_AUTO, XWIN/YWIN and their
  errors, or any other parameter list.
- `run_psfex` and `source_extractor_psf_fit`: a PSFEx model (Debian
  ``psfex``) built from the same frame, then SourceExtractor PSF fitting
  (XPSF/YPSF, FLUX_PSF and errors).
- `psf_photometry_true_psf`: photutils `~photutils.psf.PSFPhotometry` with the
  *true* PSF of a simulated frame (an `~photutils.psf.ImagePSF` built from
  `asidfe_phot.datasets.render_psf_stamps`), per frame or per star, or with
  a spatially varying true PSF (`true_gridded_psf`, a photutils
  `~photutils.psf.GriddedPSFModel`) in one call for a whole frame.

Install the binaries with ``apt-get install -y source-extractor psfex``.
Importing this module never needs them; a call raises `ToolNotFoundError`
with the install command when they are missing. All returned positions are
0-based (photutils' convention); SourceExtractor's 1-based ``*_IMAGE``
positions are converted (``meta['positions'] = '0-based'``).
"""

import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from training.frames import true_gridded_psf, true_image_psf  # noqa: F401 (re-exported)

__all__ = ["ToolNotFoundError", "find_source_extractor", "find_psfex", "run_source_extractor",
           "run_psfex", "source_extractor_psf_fit", "true_image_psf", "true_gridded_psf",
           "psf_photometry_true_psf",
           "DEFAULT_PARAMS", "PSF_FIT_PARAMS"]

#: Default output parameters: windowed positions, AUTO and aperture fluxes, their errors.
DEFAULT_PARAMS = ("NUMBER", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "ERRX2WIN_IMAGE",
                  "ERRY2WIN_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "FLUX_APER", "FLUXERR_APER",
                  "FLUX_MAX", "FWHM_IMAGE", "ELONGATION", "CLASS_STAR", "FLAGS")
#: Parameters of the PSF-fitting pass (needs a PSFEx model).
PSF_FIT_PARAMS = DEFAULT_PARAMS + ("XPSF_IMAGE", "YPSF_IMAGE", "ERRX2PSF_IMAGE",
                                   "ERRY2PSF_IMAGE", "FLUX_PSF", "FLUXERR_PSF", "CHI2_PSF",
                                   "SPREAD_MODEL", "SPREADERR_MODEL")
#: What PSFEx needs from the first pass (Debian's /usr/share/psfex/prepsfex.param, plus S/N).
_PREPSFEX_PARAMS = ("VIGNET(35,35)", "X_IMAGE", "Y_IMAGE", "FLUX_APER", "FLUXERR_APER",
                    "FLUX_RADIUS", "ELONGATION", "FLAGS", "SNR_WIN", "FLUX_MAX")
#: 1-based SourceExtractor pixel positions (converted to 0-based).
_POSITION_COLUMNS = ("X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "XPSF_IMAGE",
                     "YPSF_IMAGE", "XPEAK_IMAGE", "YPEAK_IMAGE", "XMODEL_IMAGE", "YMODEL_IMAGE",
                     "XMIN_IMAGE", "YMIN_IMAGE", "XMAX_IMAGE", "YMAX_IMAGE")
_SHARE_DIRS = ("/usr/share/source-extractor", "/usr/share/sextractor",
               "/usr/local/share/source-extractor", "/usr/local/share/sextractor")
_INSTALL_HINT = "install it with: apt-get install -y source-extractor psfex"


class ToolNotFoundError(RuntimeError):
    """A reference binary (SourceExtractor, PSFEx) is not installed."""


def find_source_extractor():
    """Path of the SourceExtractor executable (``source-extractor`` or ``sex``)."""
    for name in ("source-extractor", "sex"):
        path = shutil.which(name)
        if path:
            return path
    msg = f"SourceExtractor ('source-extractor' or 'sex') is not on PATH; {_INSTALL_HINT}"
    raise ToolNotFoundError(msg)


def find_psfex():
    """Path of the PSFEx executable."""
    path = shutil.which("psfex")
    if path:
        return path
    msg = f"PSFEx ('psfex') is not on PATH; {_INSTALL_HINT}"
    raise ToolNotFoundError(msg)


def _share_file(name):
    for d in _SHARE_DIRS:
        path = Path(d) / name
        if path.exists():
            return path
    return None


def _write_image(path, data, header=None):
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2:
        msg = f"data must be a 2-D image, got shape {data.shape}"
        raise ValueError(msg)
    hdr = fits.Header()
    if header is not None:
        for key in ("GAIN", "SATURATE", "EXPTIME"):
            if key in header:
                hdr[key] = header[key]
    fits.PrimaryHDU(data.astype(">f4"), header=hdr).writeto(path, overwrite=True)


def _base_config(workdir, filter_fwhm):
    """Config files every run needs (filter and star/galaxy network), written into workdir."""
    conv = _share_file("default.conv")
    nnw = _share_file("default.nnw")
    config = {"FILTER": "Y", "CHECKIMAGE_TYPE": "NONE", "VERBOSE_TYPE": "QUIET",
              "WRITE_XML": "N", "NTHREADS": "1", "PIXEL_SCALE": "1.0",
              "SEEING_FWHM": f"{filter_fwhm:.3f}", "PHOT_APERTURES": "10",
              "BACK_SIZE": "64", "BACK_FILTERSIZE": "3"}
    if conv is not None:
        config["FILTER_NAME"] = str(conv)
    else:
        # A 3x3 pyramidal filter, written out (SourceExtractor's default.conv).
        path = Path(workdir) / "default.conv"
        path.write_text("CONV NORM\n1 2 1\n2 4 2\n1 2 1\n")
        config["FILTER_NAME"] = str(path)
    if nnw is not None:
        config["STARNNW_NAME"] = str(nnw)
    return config


def _run(cmd, cwd, what):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        msg = (f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n"
               f"{proc.stderr.strip()[-2000:]}")
        raise RuntimeError(msg)
    return proc


def _read_ascii_catalogue(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = Table.read(path, format="ascii.sextractor")
    for name in tbl.colnames:
        if name in _POSITION_COLUMNS:
            tbl[name] = np.asarray(tbl[name], dtype=np.float64) - 1.0
        tbl[name].unit = None
    tbl.meta["positions"] = "0-based (SourceExtractor *_IMAGE positions minus 1)"
    return tbl


def run_source_extractor(data, *, config=None, params=DEFAULT_PARAMS, header=None, psf=None,
                         seeing_fwhm=2.0, workdir=None, catalog_type="ASCII_HEAD"):
    """
    Run the SourceExtractor binary on a 2-D array.

    Parameters
    ----------
    data : 2-D array
        The image (sky not subtracted: SourceExtractor estimates it).
    config : dict, optional
        SourceExtractor keywords overriding the defaults (``source-extractor
        -dd``), e.g. ``{"GAIN": 2.0, "DETECT_THRESH": 3, "SATUR_LEVEL": 6e4}``.
        Values are passed on the command line as ``-KEY value``.
    params : sequence of str, optional
        Output parameters (``source-extractor -dp`` lists them).
    header : `~astropy.io.fits.Header`, optional
        GAIN, SATURATE and EXPTIME are copied into the temporary FITS file.
    psf : path-like, optional
        A PSFEx ``.psf`` model, needed for the ``*PSF*`` and ``*MODEL``
        parameters.
    seeing_fwhm : float, optional
        Stellar FWHM in pixels (for CLASS_STAR; pixel scale is 1).
    workdir : path-like, optional
        Where to write the files (kept); default a temporary directory
        (removed).
    catalog_type : {'ASCII_HEAD', 'FITS_LDAC'}, optional
        ``FITS_LDAC`` writes a PSFEx input catalogue and returns its path
        instead of a table.

    Returns
    -------
    `~astropy.table.Table` or `pathlib.Path`
        One row per detection, SourceExtractor's column names; positions
        (``X_IMAGE``, ``XWIN_IMAGE``, ``XPSF_IMAGE``, ...) 0-based.

    Raises
    ------
    ToolNotFoundError
        SourceExtractor is not installed.
    RuntimeError
        SourceExtractor exited with an error (its stderr is in the message).
    """
    exe = find_source_extractor()
    own = workdir is None
    tmp = tempfile.mkdtemp(prefix="asidfe_sex_") if own else None
    wd = Path(tmp if own else workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    try:
        image = wd / "image.fits"
        _write_image(image, data, header)
        (wd / "out.param").write_text("\n".join(params) + "\n")
        cat = wd / ("out.cat" if catalog_type == "ASCII_HEAD" else "out.ldac")
        cfg = _base_config(wd, seeing_fwhm)
        cfg.update({"CATALOG_NAME": str(cat), "CATALOG_TYPE": catalog_type,
                    "PARAMETERS_NAME": str(wd / "out.param")})
        if psf is not None:
            cfg["PSF_NAME"] = str(psf)
        for key, value in (config or {}).items():
            cfg[str(key).upper()] = (",".join(str(v) for v in value)
                                     if isinstance(value, (list, tuple)) else str(value))
        # An empty default file, so the keywords come only from the command line.
        (wd / "empty.sex").write_text("")
        cmd = [exe, str(image), "-c", str(wd / "empty.sex")]
        for key, value in cfg.items():
            cmd += [f"-{key}", value]
        _run(cmd, wd, "SourceExtractor")
        if catalog_type != "ASCII_HEAD":
            if own:
                msg = "catalog_type='FITS_LDAC' needs a workdir to keep the catalogue in"
                raise ValueError(msg)
            return cat
        tbl = _read_ascii_catalogue(cat)
        tbl.meta["tool"] = _run([exe, "-v"], wd, "SourceExtractor").stdout.strip()
        tbl.meta["config"] = {k: v for k, v in cfg.items()
                              if k not in ("CATALOG_NAME", "PARAMETERS_NAME")}
        return tbl
    finally:
        if own:
            shutil.rmtree(tmp, ignore_errors=True)


def run_psfex(ldac_catalogue, *, config=None, workdir=None):
    """
    Build a PSFEx model from a SourceExtractor FITS_LDAC catalogue.

    Parameters
    ----------
    ldac_catalogue : path-like
        Made with the ``VIGNET`` parameter (see `source_extractor_psf_fit`).
    config : dict, optional
        PSFEx keywords overriding the defaults used here: ``PSFVAR_DEGREES
        1``, ``SAMPLE_FWHMRANGE 1.0,20.0``, ``SAMPLE_MINSN 20``, no check
        plots or images.
    workdir : path-like, optional
        Where the ``.psf`` file is written; default next to the catalogue.

    Returns
    -------
    `pathlib.Path`
        The ``.psf`` model.
    """
    exe = find_psfex()
    ldac = Path(ldac_catalogue).resolve()
    wd = Path(workdir).resolve() if workdir is not None else ldac.parent
    cfg = {"PSFVAR_DEGREES": "1", "SAMPLE_FWHMRANGE": "1.0,20.0", "SAMPLE_MINSN": "20",
           "CHECKPLOT_TYPE": "NONE", "CHECKIMAGE_TYPE": "NONE", "WRITE_XML": "N",
           "VERBOSE_TYPE": "QUIET", "PSF_DIR": str(wd), "NTHREADS": "1"}
    for key, value in (config or {}).items():
        cfg[str(key).upper()] = str(value)
    (wd / "empty.psfex").write_text("")
    cmd = [exe, str(ldac), "-c", str(wd / "empty.psfex")]
    for key, value in cfg.items():
        cmd += [f"-{key}", value]
    _run(cmd, wd, "PSFEx")
    psf = wd / (ldac.stem + ".psf")
    if not psf.exists():
        msg = f"PSFEx ran but wrote no PSF model ({psf}); too few usable stars?"
        raise RuntimeError(msg)
    return psf


def source_extractor_psf_fit(data, *, config=None, psfex_config=None, params=PSF_FIT_PARAMS,
                             header=None, seeing_fwhm=2.0, workdir=None):
    """
    SourceExtractor PSF-fit photometry with a PSFEx model built from the same frame.

    Three runs: SourceExtractor (FITS_LDAC with 35x35 vignets), PSFEx,
    SourceExtractor again with ``PSF_NAME``. The same ``config`` is used in
    both SourceExtractor passes.

    Parameters
    ----------
    data : 2-D array
    config, psfex_config : dict, optional
        See `run_source_extractor` and `run_psfex`.
    params : sequence of str, optional
        Parameters of the final pass (default: `PSF_FIT_PARAMS`).
    header, seeing_fwhm : optional
        See `run_source_extractor`.
    workdir : path-like, optional
        Keep the intermediate files (the ``.psf`` model included) there.

    Returns
    -------
    `~astropy.table.Table`
        As `run_source_extractor`; ``XPSF_IMAGE, YPSF_IMAGE, FLUX_PSF,
        FLUXERR_PSF, ERRX2PSF_IMAGE, ERRY2PSF_IMAGE`` among the columns
        (``FLUX_PSF`` is 0 where the fit failed). ``meta['psf_model']`` is
        the PSFEx header of the model (FWHM, number of stars used, chi2).
    """
    find_source_extractor()
    find_psfex()
    own = workdir is None
    tmp = tempfile.mkdtemp(prefix="asidfe_psfex_") if own else None
    wd = Path(tmp if own else workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    try:
        ldac = run_source_extractor(data, config=config, params=_PREPSFEX_PARAMS, header=header,
                                    seeing_fwhm=seeing_fwhm, workdir=wd / "pass1",
                                    catalog_type="FITS_LDAC")
        psf = run_psfex(ldac, config=psfex_config, workdir=wd / "pass1")
        with fits.open(psf) as hdul:
            info = {k: hdul[1].header[k] for k in ("PSF_FWHM", "PSF_SAMP", "ACCEPTED", "LOADED",
                                                   "CHI2", "POLDEG1")
                    if k in hdul[1].header}
        tbl = run_source_extractor(data, config=config, params=params, header=header, psf=psf,
                                   seeing_fwhm=seeing_fwhm, workdir=wd / "pass2")
        tbl.meta["psf_model"] = info
        return tbl
    finally:
        if own:
            shutil.rmtree(tmp, ignore_errors=True)


def psf_photometry_true_psf(data, x, y, psf_params, *, error=None, per_source=None,
                            fit_shape=11, flux_init=None, oversampling=4):
    """
    photutils `~photutils.psf.PSFPhotometry` with the true (simulated) PSF.

    Parameters
    ----------
    data : 2-D array
        Background-subtracted image.
    x, y : 1-D arrays
        Initial positions (0-based), e.g. the detector's.
    psf_params : dict or `~astropy.modeling.Model`
        The simulator's PSF parameters: scalars (one PSF for the frame) or
        per-source arrays (a spatially varying PSF), as in
        `asidfe_phot.datasets.make_star_field`. Or a ready photutils PSF
        model (e.g. from `true_gridded_psf`), used for all sources in one
        call (``per_source`` and ``oversampling`` are then ignored).
    error : 2-D array, optional
        1-sigma error per pixel (weights and ``flux_err``).
    per_source : bool, optional
        Fit each source with its own PSF (one PSFPhotometry call per source;
        neighbours are not fitted jointly). Default: True when any parameter
        is a per-source array with more than one distinct value.
    fit_shape : int, optional
        Size of the fitting box (odd).
    flux_init : 1-D array, optional
        Initial fluxes; default photutils' aperture estimate.
    oversampling : int, optional
        Oversampling of the ePSF image.

    Returns
    -------
    `~astropy.table.Table`
        ``x_init, y_init, x_fit, y_fit, flux_fit, x_err, y_err, flux_err,
        flags`` (photutils' flags), one row per input position, in order.
    """
    from astropy.modeling import Model
    from photutils.psf import PSFPhotometry

    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    n = x.size
    if isinstance(psf_params, Model):
        ready, psf_params, per_source = psf_params, {}, False
    else:
        ready = None
    varying = {k: np.broadcast_to(np.asarray(v), (n,)) for k, v in psf_params.items()
               if not isinstance(v, str)}
    if per_source is None:
        per_source = any(np.unique(v).size > 1 for v in varying.values())

    def params_of(i):
        return {k: (v if isinstance(v, str) else np.broadcast_to(np.asarray(v), (n,))[i].item())
                for k, v in psf_params.items()}

    init = Table({"x": x, "y": y})
    if flux_init is not None:
        init["flux"] = np.asarray(flux_init, dtype=np.float64)
    cols = ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err", "flags")
    out = {c: np.full(n, np.nan) for c in cols}
    groups = [np.arange(i, i + 1) for i in range(n)] if per_source else [np.arange(n)]
    data = np.asarray(data, dtype=np.float64)
    for idx in groups:
        if not idx.size:
            continue
        model = (ready if ready is not None
                 else true_image_psf(params_of(int(idx[0])), oversampling=oversampling))
        phot = PSFPhotometry(model, fit_shape=int(fit_shape), aperture_radius=3.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = phot(data, error=error, init_params=init[idx])
        for c in cols:
            if c in res.colnames:
                out[c][idx] = np.asarray(res[c], dtype=np.float64)
    tbl = Table({"x_init": x, "y_init": y, **out})
    tbl["flags"] = np.nan_to_num(tbl["flags"], nan=-1).astype(int)
    tbl.meta["psf"] = ("given photutils model " + type(ready).__name__ if ready is not None else
                       "true PSF (asidfe_phot.datasets.render_psf_stamps) as photutils ImagePSF")
    return tbl
