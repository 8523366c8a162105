"""Machine-learning photometry: the photutils-compatible `MLPhotometry` class."""

import sys
import warnings
from datetime import UTC, datetime

import numpy as np
from astropy.table import QTable

from asidfe_phot import _aperture_correction, _blends, _onnx, _psf_fit, _stamps, _validation
from asidfe_phot import flags as _flags
from asidfe_phot import psf as _psf
from asidfe_phot._background import estimate_background
from asidfe_phot._validation import (
    coerce_data,
    gain_value,
    parse_positions,
    saturation_value,
    value_in_unit,
)
from asidfe_phot.exceptions import FlaggedSourcesWarning, NoSourceNoiseWarning, PSFModelWarning
from asidfe_phot.models import verify_model

__all__ = ["MLPhotometry"]

OUTPUT_COLUMNS = ("id", "x_init", "y_init", "x_fit", "y_fit", "flux_fit", "x_err", "y_err",
                  "flux_err", "flags")
#: Flags serious enough for a (single, summary) warning.
_WARN_FLAGS = (_flags.NO_OVERLAP | _flags.CORE_MASKED | _flags.SATURATED | _flags.COMPACT
               | _flags.PSF_MISMATCH | _flags.NO_POSITION)
_CORE_RADIUS = 3
_SATURATION_RADIUS = 2
_SNR_RANGE = (2.0, 3e4)
#: Core S/N from which the PSF fit's flux and centre replace the network's (see Notes).
PSF_FIT_MIN_SNR = 0.0
#: Offset (px) of an automatic ePSF's centre from the network's that is removed (see
#: `_fit_psf`).
AUTO_CENTRE_TOLERANCE = 0.02
#: Relative PSF-model error (``psf_profile_error``) beyond which the model is not used.
UNUSABLE_PSF_ERROR = 0.25
#: A source's own model error counts from this (and 3x the image's): galaxies, blends.
_OWN_MODEL_ERROR_MIN = 0.1
#: Flux error (relative) and position error (in FWHM) per unit of a source's own core
#: model error, where its core holds light the PSF does not explain (BLENDED).
_UNEXPLAINED_ERROR_PER_EPS = 2.0
#: Pixels this many sigma below the background are bad (DAOPHOT's low good datum is 7).
LOW_BAD_SIGMA = 10.0
#: PSF-model error (relative) from which the fit is redone with it in the pixel variances.
_MIN_PROFILE_ERROR = 0.005
#: Flux error (relative) and position error (in FWHM) per unit relative PSF-model error.
_PSF_FLUX_ERROR_PER_EPS = 0.5
_PSF_POSITION_ERROR_PER_EPS = 0.25
#: Peak / central 3x3 sum above which a source is sharper than any trained PSF (the
#: narrowest, FWHM 1 px since v4, peak at most ~0.64), checked where the 3x3 sum has
#: S/N > 10.
_COMPACT_PEAK_FRACTION = 0.7
_COMPACT_MIN_SNR = 10.0


class _PreparedImage:
    """Everything per image that stamps are cut from (computed once per call)."""

    def __init__(self, subtracted, bad, error, rms, gain, raw, saturation):
        self.subtracted = subtracted    # data - background
        self.bad = bad                  # masked or non-finite pixels (or None)
        self.error = error              # user's total error map, or None
        self.rms = rms                  # background rms map (used when error is None)
        self.gain = gain                # effective gain for the source Poisson term, or None
        self.raw = raw                  # data before background subtraction
        self.saturation = saturation


class MLPhotometry:
    """
    Photometry and astrometry of point sources with a TS-MVE neural network.

    For each input position a 32x32 stamp is cut from the background-subtracted
    image and a two-step mean-variance estimation CNN (Stoppa et al. 2023)
    predicts the total flux, the sub-pixel centre and a calibrated 1-sigma
    uncertainty of each. A drop-in for photutils' `~photutils.psf.PSFPhotometry`
    and `~photutils.aperture.aperture_photometry` in scripts.

    The instance is immutable after construction and holds one onnxruntime
    session, so it can be reused for many images.

    Parameters
    ----------
    model : str or path-like, optional
        A shipped model name (see `asidfe_phot.models.list_models`) or a model
        directory (``model.onnx`` + ``config.json``). Default: the shipped
        default model. Its sha256 is checked against its card.
    batch_size : int, optional
        Stamps per network call; memory is bounded by this, not by the number
        of sources.
    providers : list of str, optional
        onnxruntime execution providers. Default: CUDA when onnxruntime-gpu
        and a GPU are present, else CPU.
    progress_bar : bool, optional
        Print progress to stderr.
    finder : callable, optional
        A photutils finder (e.g. `~photutils.detection.DAOStarFinder`) used when
        ``init_params`` is not given; it runs on the background-subtracted image.
    localbkg_estimator : `~photutils.background.LocalBackground`, optional
        Subtract a local annulus background per source, after the 2-D background.
    background_box_size : int, optional
        Mesh size (px) of the default 2-D background estimate.
    max_shift : float, optional
        Flag sources whose fitted position is further than this (px) from the input.
    threads : int, optional
        CPU threads of the network (onnxruntime's intra-op threads). Default:
        all cores. Use 1 when several processes share the machine (one image
        per process).
    psf_model : photutils PSF model, str or path-like, optional
        The image's PSF, as photutils' `~photutils.psf.PSFPhotometry` takes it:
        any photutils PSF model (`~photutils.psf.ImagePSF`, the ePSF of
        `~photutils.psf.EPSFBuilder`, `~photutils.psf.GriddedPSFModel` for a PSF
        that varies across the frame, `~photutils.psf.CircularGaussianPRF`,
        `~photutils.psf.MoffatPSF`, ...), a PSFEx ``.psf`` file, or ``"auto"``:
        an ePSF built from each image's own bright, isolated, unsaturated point
        sources (`asidfe_phot.psf.build_epsf`; the stars used are in ``meta``).
        A PSF-conditioned model (contract 3) sees it, rendered at each stamp's
        reference pixel, as an extra input; the fluxes and centres are then
        refined by a PSF fit started at the network's estimates (see Notes).
        ``None``: the network alone. Default ``"auto"``, quietly: an image
        with fewer than 10 good stars is measured as with ``None`` (``meta``
        says ``psf_used``); pass ``"auto"`` to be warned instead.
    aperture_correction : {"auto", True, False} or float, optional
        Per-image correction of the fluxes for light beyond the 32x32 stamp
        (PSF wings and halos, PSF shapes the network was not trained on),
        measured on the image's bright isolated stars as the ratio of a large
        aperture's flux (10 half-light radii, local sky annulus) to the
        network's. ``"auto"`` (default) applies it only when at least 10 such
        stars measure it to 2 % and it differs from 1 by more than 1 % and 3
        standard errors; ``True`` applies it whenever it is measured to 2 %;
        ``False`` never; a number is applied as given (e.g. one measured on
        another image of the same night). ``meta`` reports what was measured
        and done.

    Notes
    -----
    Pixel convention (photutils'): 0-based, integer coordinates are pixel centres.

    With a PSF model, each source is fitted for flux and centre in a box of
    ``2 ceil(1.5 FWHM) + 1`` px, every other input source's model subtracted,
    starting from the network's estimates (two passes, as DAOPHOT's ALLSTAR
    iterates). The fitted values replace the network's where the fit is
    trusted (see ``PSF_FIT_MIN_SNR``); ``flux_fit`` is then the total flux as
    the PSF model defines it (unit-flux model), so no aperture correction is
    measured. ``qfit`` and ``cfit`` are added with photutils' definitions, and
    `make_model_image` and `make_residual_image` render the last result.

    ``flux_err``, ``x_err`` and ``y_err`` are the network's predicted 1-sigma
    uncertainties of the total flux and position. They include background and
    source photon noise, read noise and the effect of neighbours, and are
    calibrated on simulations (z-score std near 1 per S/N bin; see the model
    card). For them to hold at high S/N the network must know the sources'
    Poisson noise: pass ``error`` (a total error map, e.g. from
    `~photutils.utils.calc_total_error`), or ``gain`` (electrons per data unit),
    or an image whose sky level has not been subtracted (the effective gain is
    then ``sky / rms**2``). Otherwise rows get the ``NO_SOURCE_NOISE`` flag.
    """

    def __init__(self, model=None, *, batch_size=2048, providers=None, progress_bar=False,
                 finder=None, localbkg_estimator=None, background_box_size=64, max_shift=2.0,
                 threads=None, aperture_correction="auto",
                 psf_model=_psf.DEFAULT_PSF_MODEL):
        if int(batch_size) != batch_size or batch_size < 1:
            msg = f"batch_size must be a positive integer, got {batch_size!r}"
            raise ValueError(msg)
        if finder is not None and not callable(finder):
            msg = "finder must be callable, e.g. photutils.detection.DAOStarFinder(...)"
            raise TypeError(msg)
        if localbkg_estimator is not None and not callable(localbkg_estimator):
            msg = "localbkg_estimator must be callable, e.g. photutils.background.LocalBackground"
            raise TypeError(msg)
        if background_box_size < 8:
            msg = f"background_box_size must be >= 8 px, got {background_box_size}"
            raise ValueError(msg)
        if not max_shift > 0:
            msg = f"max_shift must be positive, got {max_shift}"
            raise ValueError(msg)
        if threads is not None and (int(threads) != threads or threads < 1):
            msg = f"threads must be a positive integer or None, got {threads!r}"
            raise ValueError(msg)
        if not (isinstance(aperture_correction, bool) or aperture_correction == "auto"
                or (isinstance(aperture_correction, (int, float))
                    and 0 < aperture_correction < np.inf)):
            msg = ('aperture_correction must be "auto", True, False or a positive number, '
                   f"got {aperture_correction!r}")
            raise ValueError(msg)
        self.psf_model = _psf.resolve_psf_model(psf_model)
        self._model_dir, self._card = verify_model(model)
        self._n_channels = _stamps.input_channels(self._card["contract"]["version"])
        self._last = None
        self._session = _onnx.create_session(self._model_dir / self._card.get("file",
                                                                              "model.onnx"),
                                             providers, threads, self._n_channels)
        self.batch_size = int(batch_size)
        self.progress_bar = bool(progress_bar)
        self.finder = finder
        self.localbkg_estimator = localbkg_estimator
        self.background_box_size = int(background_box_size)
        self.max_shift = float(max_shift)
        self.aperture_correction = aperture_correction

    @property
    def model_card(self):
        """A copy of the model card (dict)."""
        return dict(self._card)

    @property
    def providers(self):
        """The onnxruntime providers in use."""
        return self._session.get_providers()

    def __repr__(self):
        return (f"<MLPhotometry(model={self._card['name']}_v{self._card['version']}, "
                f"batch_size={self.batch_size}, providers={self.providers}, "
                f"finder={self.finder!r}, localbkg_estimator={self.localbkg_estimator!r})>")

    def make_model_image(self, shape, table=None):
        """
        An image of the measured sources, rendered with the PSF model.

        As photutils' `PSFPhotometry.make_model_image`: each source of the last
        call (or of ``table``, a result of this instance) at its ``x_fit,
        y_fit`` with ``flux_fit``, using the PSF of that call (for
        ``psf_model="auto"``, the ePSF built from that image), within
        ``RADIUS`` px of its centre.

        Parameters
        ----------
        shape : tuple of int
            Shape of the output image.
        table : `~astropy.table.QTable`, optional
            A table returned by this instance; default the last one.

        Raises
        ------
        ValueError
            Before any call, or when the last call used no PSF model.
        """
        sampler = self._last_psf_sampler()
        if table is None:
            x, y, flux, unit = (self._last[k] for k in ("x", "y", "flux", "unit"))
        else:
            x = np.asarray(table["x_fit"], dtype=float)
            y = np.asarray(table["y_fit"], dtype=float)
            flux = table["flux_fit"]
            unit = getattr(flux, "unit", None)
            flux = np.asarray(getattr(flux, "value", flux), dtype=float)
        image = _psf_fit.model_image(tuple(shape), sampler, x, y, flux, _psf.RADIUS)
        return image if unit is None else image * unit

    def make_residual_image(self, data, table=None):
        """
        ``data`` minus `make_model_image` (photutils' `make_residual_image`).

        ``data`` is the image as given to the call (its background is not
        removed here: subtract it first to see the sources' residuals alone).
        """
        values = getattr(data, "data", data)
        model = self.make_model_image(np.shape(values), table)
        return values - model

    def _last_psf_sampler(self):
        if self._last is None:
            msg = "make_model_image needs a measurement first: call the instance on an image"
            raise ValueError(msg)
        if self._last["sampler"] is None:
            msg = ("the last measurement used no PSF model (psf_model=None, or 'auto' found "
                   "too few stars): nothing to render the sources with")
            raise ValueError(msg)
        return self._last["sampler"]

    @staticmethod
    def decode_flags(flags):
        """Names of the flags set in ``flags`` (see `asidfe_phot.flags`)."""
        return _flags.decode_flags(flags)

    def __call__(self, data, *, mask=None, error=None, init_params=None, background=None,
                 gain=None, saturation=None, wcs=None):
        """
        Measure the sources in ``data``.

        Parameters
        ----------
        data : 2-D array, `~astropy.units.Quantity`, MaskedArray or `~astropy.nddata.NDData`
            The image. NDData (e.g. CCDData) gives its mask, uncertainty, unit
            and wcs. Big-endian FITS data are fine.
        mask : 2-D bool array, optional
            True for pixels to ignore (non-finite pixels are always ignored).
            Merged with a MaskedArray's mask.
        error : 2-D array or Quantity, optional
            Total 1-sigma error per pixel, data units (see Notes of the class).
        init_params : `~astropy.table.Table`, optional
            Input positions, under any of the column names photutils'
            PSFPhotometry accepts: x in ``x_init, xinit, x, x_0, x0, xcentroid,
            x_centroid, x_peak, xcen, x_cen, xpos, x_pos, x_fit, xfit`` (y alike),
            or a ``sky_centroid`` SkyCoord column with ``wcs``; optional unique
            ``id``. Without it, the ``finder`` given at construction is used.
        background : float, 2-D array, Quantity or `~photutils.background.Background2D`, optional
            The background to subtract. Default: estimated with a sigma-clipped
            mesh (``background_box_size``). Pass ``0`` for background-subtracted data.
        gain : float, optional
            Effective gain, electrons per data unit, for the sources' Poisson
            noise when ``error`` is not given.
        saturation : float or Quantity, optional
            Saturation level (data units, before background subtraction): stamps
            whose core reaches it are flagged ``SATURATED``.
        wcs : WCS, optional
            Adds a ``sky_centroid`` column; converts ``sky_centroid`` inputs.

        Returns
        -------
        `~astropy.table.QTable`
            One row per input row, in input order: ``id, x_init, y_init, x_fit,
            y_fit, flux_fit, x_err, y_err, flux_err, flags`` (flux in the data's
            unit; positions in pixels) and ``sky_centroid`` when a WCS is known.
            ``meta`` records the model, its sha256, the providers, the gain and
            background used, and the package versions.

        Raises
        ------
        ValueError, TypeError, astropy.units.UnitsError
            On bad input, with a message naming the problem.
        """
        return self._call(data, mask=mask, error=error, init_params=init_params,
                          background=background, gain=gain, saturation=saturation, wcs=wcs)[0]

    def _call(self, data, *, mask=None, error=None, init_params=None, background=None, gain=None,
              saturation=None, wcs=None):
        """`__call__`, also returning the per-source internals (e.g. ``snr_core``)."""
        coerced = coerce_data(data, mask, error, wcs)
        unit, wcs, scale = coerced.unit, coerced.wcs, coerced.scale
        if init_params is None:
            if self.finder is None:
                msg = "give init_params (a table of positions) or construct with a finder"
                raise ValueError(msg)
        prepared, info = self._prepare(coerced, background, gain, saturation)
        if init_params is None:
            # The finder's thresholds are in the data's units: it sees the data's values.
            subtracted = (prepared.subtracted if scale == 1 else
                          np.ldexp(prepared.subtracted, coerced.exponent))
            found = self.finder(subtracted, mask=prepared.bad)
            init_params = found if found is not None else QTable({"x": [], "y": []})
        x, y, ids = parse_positions(init_params, wcs)
        sampler, psf_info = self._psf_sampler(prepared)
        info.update(psf_info)
        results = self._measure(prepared, x, y, sampler)
        if sampler is not None:
            info.update(self._fit_psf(prepared, results, sampler))
            if info["psf_profile_error"] > UNUSABLE_PSF_ERROR:
                # The model describes the image's point sources so badly that it would
                # mislead the network and the fit: measure as without one, and say so.
                msg = (f"the PSF model describes this image's stars to "
                       f"{100 * info['psf_profile_error']:.0f} % only (psf_profile_error); "
                       "it is not used")
                warnings.warn(msg, PSFModelWarning, stacklevel=3)
                info["psf_used"] = False
                sampler = None
                results = self._measure(prepared, x, y, None)
        if sampler is None:
            info.update(self._correct_apertures(prepared, results))
        _cover_shared_light(results, x, y)
        if scale != 1:
            # Back from the internal scale (see _validation.scale_exponent) to the data's.
            for key in ("flux_fit", "flux_err"):
                results[key] = results[key] * scale
            info["internal_scale"] = scale
        table = self._assemble(ids, x, y, results, unit, wcs, info)
        self._last = {"sampler": sampler, "x": results["x_fit"], "y": results["y_fit"],
                      "flux": results["flux_fit"], "unit": unit}
        return table, results

    def _psf_sampler(self, prepared):
        """The PSF of this image, tabulated (or None), and what to report in meta."""
        if self.psf_model is None:
            return None, {"psf_model": None, "psf_used": False}
        if isinstance(self.psf_model, str):  # "auto"
            noise = prepared.error if prepared.error is not None else prepared.rms
            model, info = _psf.build_epsf(prepared.subtracted, noise, prepared.bad,
                                          saturation=None if prepared.saturation is None
                                          else prepared.saturation - float(
                                              np.median(prepared.raw - prepared.subtracted)),
                                          quiet=self.psf_model is _psf.DEFAULT_PSF_MODEL)
            if model is None:
                return None, {**info, "psf_used": False}
        else:
            model = self.psf_model
            info = {"psf_model": type(model).__name__}
        info["psf_used"] = True
        sampler = _psf.PSFSampler(model)
        info["psf_fwhm"] = sampler.fwhm
        return sampler, info

    def _error_boxes(self, prepared):
        """A function cutting error boxes from the error map or the noise model."""
        def boxes(cx, cy, size, data_boxes):
            if prepared.error is not None:
                return _stamps.cutout_stamps(prepared.error, cx, cy, size, fill=np.inf)[0]
            rms = _stamps.cutout_stamps(prepared.rms, cx, cy, size, fill=np.inf)[0]
            return _stamps.total_error(data_boxes, rms, prepared.gain)
        return boxes

    def _fit_psf(self, prepared, res, sampler):
        """Refine ``res`` in place by a PSF fit at the network's estimates; meta entries."""
        ok = np.isfinite(res["x_fit"]) & ((res["flags"] & _flags.NO_OVERLAP) == 0)

        def fit(profile_error=0.0):
            out = _psf_fit.fit_sources(prepared.subtracted, self._error_boxes(prepared),
                                       prepared.bad, res["x_fit"], res["y_fit"],
                                       res["flux_fit"], sampler, fit=ok,
                                       x_input=res["x_init"], y_input=res["y_init"],
                                       flux_err=res["flux_err"], profile_error=profile_error)
            res["flags"][out["blended"]] |= _flags.BLENDED
            return out

        fitted = fit()
        res["network"] = {k: res[k].copy() for k in ("x_fit", "y_fit", "flux_fit", "x_err",
                                                     "y_err", "flux_err")}

        def bright(f):
            return (ok & np.isfinite(f["flux"]) & np.isfinite(f["flux_err"]) & ~f["blended"]
                    & (res["snr_core"] >= 30))
        # How well the PSF model describes this image's bright sources. An imperfect model
        # is refitted with its error in the pixel variances (DAOPHOT's profile error), and
        # what remains adds to the fit's errors (a wrong model biases flux and centre alike).
        profile_error = _psf_fit.psf_model_error(fitted, bright(fitted))
        if np.isfinite(profile_error) and profile_error > _MIN_PROFILE_ERROR:
            fitted = fit(profile_error)
        else:
            profile_error = 0.0 if np.isfinite(profile_error) else profile_error
        res["psf_fit"] = fitted
        fitted_ok = ok & np.isfinite(fitted["flux"]) & np.isfinite(fitted["flux_err"])
        if np.isfinite(profile_error):
            eps_used = profile_error
        else:
            # Too few bright sources to judge the model: trust a model the user gave; an
            # automatic ePSF must prove itself first.
            eps_used = 0.0 if not isinstance(self.psf_model, str) else np.inf
        # A source the PSF does not describe (a galaxy, an unlisted neighbour) has its own,
        # larger model error: where it stands out from the image's (a bright star's small
        # excess is the image's model error seen at high S/N, already counted).
        own = _psf_fit.source_model_error(fitted)
        own_core = _psf_fit.source_model_error(fitted, core=True)
        unexplained = fitted_ok & (own_core > np.maximum(3 * eps_used, _OWN_MODEL_ERROR_MIN))
        eps_used = np.where(own > np.maximum(3 * eps_used, _OWN_MODEL_ERROR_MIN), own, eps_used)
        # A model error is coherent over a source's pixels: it biases the flux and centre by
        # a fraction of itself (measured on the real frames: ~0.75 of eps in flux), which
        # no number of pixels averages away.
        flux_err = np.hypot(fitted["flux_err"],
                            _PSF_FLUX_ERROR_PER_EPS * eps_used * np.abs(fitted["flux"]))
        pos_floor = eps_used * sampler.fwhm * _PSF_POSITION_ERROR_PER_EPS
        # The model's centre against the network's (trained on first moments) on bright,
        # unblended sources. A given model defines the centre, as in photutils (where the
        # model is exact, the network's own offsets of ~0.01 px were the larger). An ePSF
        # built here has no authority on its centre: an offset beyond AUTO_CENTRE_TOLERANCE
        # is removed, and the scatter the two estimates do not explain becomes a floor of
        # the fitted centres' errors (a shifted model fits as well: chi^2 cannot see it).
        offset, scatter, n_ref = _centre_offset(res, fitted, bright(fitted))
        if isinstance(self.psf_model, str):
            offset = np.where(np.abs(offset) > AUTO_CENTRE_TOLERANCE, offset, 0.0)
            fitted["x"] = fitted["x"] - offset[0]
            fitted["y"] = fitted["y"] - offset[1]
            pos_floor = np.hypot(pos_floor, scatter)
        else:
            offset = np.zeros(2)
        x_err = np.hypot(fitted["x_err"], pos_floor)
        y_err = np.hypot(fitted["y_err"], pos_floor)
        # Each value from whichever estimate is the more precise: the fit (bright sources,
        # a good model) or the network (faint ones, a poor model, tangled neighbours).
        use_flux = fitted_ok & ~(flux_err > res["flux_err"]) & (res["snr_core"]
                                                                 >= PSF_FIT_MIN_SNR)
        use_pos = fitted_ok & ~(np.hypot(x_err, y_err) > np.hypot(res["x_err"], res["y_err"]))
        use_pos &= res["snr_core"] >= PSF_FIT_MIN_SNR
        res["flux_fit"] = np.where(use_flux, fitted["flux"], res["flux_fit"])
        res["flux_err"] = np.where(use_flux, flux_err, res["flux_err"])
        for key, err in (("x", x_err), ("y", y_err)):
            res[f"{key}_fit"] = np.where(use_pos, fitted[key], res[f"{key}_fit"])
            res[f"{key}_err"] = np.where(use_pos, err, res[f"{key}_err"])
        res["qfit"], res["cfit"] = fitted["qfit"], fitted["cfit"]
        res["split"] = use_flux & ~fitted["blended"]
        calibration = self._card.get("sigma_calibration_auto" if isinstance(self.psf_model, str)
                                     else "sigma_calibration_psf")
        if calibration is not None:
            # The errors of the PSF mode (fit or network, as chosen), calibrated on
            # simulated frames measured with their true PSF, or with psf_model="auto" (an
            # ePSF's own errors are larger), per the model card.
            chosen = {"dx_err": res["x_err"], "dy_err": res["y_err"],
                      "flux_err": res["flux_err"]}
            _stamps.calibrate_sigmas(chosen, calibration, res["snr_core"])
            res["x_err"], res["y_err"] = chosen["dx_err"], chosen["dy_err"]
            res["flux_err"] = chosen["flux_err"]
        # Light the PSF does not explain within a FWHM of the centre (an unlisted
        # neighbour, a galaxy, a cosmic ray) may belong to another source; how much is not
        # known. The core's model error measures the unexplained fraction; the flux bias
        # it leaves is 0.5-4x that (an unlisted equal neighbour at 2, 3, 4 px, FWHM 3:
        # core error 0.22, 0.46, 0.38, flux +86 %, +52 %, +20 %): the errors are at least
        # 2x that. A floor, not a sum: on real frames the whole-box model error already
        # covers most such stars (61 of 1350 injected stars flagged, z std 0.7-1.3).
        res["flags"][unexplained] |= _flags.BLENDED
        unexplained_flux = _UNEXPLAINED_ERROR_PER_EPS * own_core * np.abs(res["flux_fit"])
        res["flux_err"] = np.where(unexplained, np.fmax(res["flux_err"], unexplained_flux),
                                   res["flux_err"])
        unexplained_pos = _UNEXPLAINED_ERROR_PER_EPS * own_core * sampler.fwhm
        for key in ("x_err", "y_err"):
            res[key] = np.where(unexplained, np.fmax(res[key], unexplained_pos), res[key])
        return {"aperture_correction": 1.0,
                "aperture_correction_note": "none needed: fluxes are the PSF model's totals",
                "psf_profile_error": profile_error,
                "psf_centre_offset": [float(offset[0]), float(offset[1])],
                "psf_centre_scatter": float(scatter), "psf_centre_nsources": n_ref,
                "psf_fit_flux_nsources": int(np.count_nonzero(use_flux)),
                "psf_fit_position_nsources": int(np.count_nonzero(use_pos)),
                }

    def _prepare(self, coerced, background, gain, saturation):
        image, unit, error = coerced.image, coerced.unit, coerced.error
        internal = 1.0 / coerced.scale
        bad = ~np.isfinite(image)
        if coerced.mask is not None:
            bad |= coerced.mask
        if error is not None:
            bad |= ~np.isfinite(error) | (error <= 0)
        if bad.all():
            msg = "data has no usable pixel (all masked or non-finite)"
            raise ValueError(msg)
        info = {}
        if background is None:
            bkg, rms = estimate_background(image, bad, self.background_box_size)
            info["background"] = f"mesh {self.background_box_size} px"
        else:
            if hasattr(background, "background") and hasattr(background, "background_rms"):
                bkg = self._background_map(background.background, unit, image.shape,
                                           coerced.exponent)
                rms = self._background_map(background.background_rms, unit, image.shape,
                                           coerced.exponent, "background_rms")
                info["background"] = type(background).__name__
            else:
                bkg = self._background_map(background, unit, image.shape, coerced.exponent)
                rms = None
                info["background"] = "user"
            # Pixels without a background value cannot be used (as masked ones).
            bad |= ~np.isfinite(bkg)
            if rms is None and error is None:
                _, rms = estimate_background(image - bkg, bad, self.background_box_size)
            if bad.all():
                msg = "no pixel has both a usable value and a finite background"
                raise ValueError(msg)
        with np.errstate(invalid="ignore", over="ignore"):
            subtracted = np.where(bad, np.float32(0), image - bkg).astype(np.float32, copy=False)
            # DAOPHOT's "low good datum": far below the sky is a dead pixel or a blank
            # value (-2**31 in integer images), not light; it would swamp any flux.
            noise = error if error is not None else rms
            low = subtracted < -LOW_BAD_SIGMA * noise
        if low.any():
            bad |= low
            subtracted[low] = 0
            info["low_bad_pixels"] = int(np.count_nonzero(low))
        if gain is not None:
            gain = gain_value(gain, unit)
            info["gain"] = gain
            gain = gain * coerced.scale        # electrons per internal unit
        elif error is None:
            level = float(np.median(bkg[~bad]))
            noise = float(np.median(rms[~bad]))
            # A sky that was not subtracted reveals the effective gain: sky / rms^2.
            if noise > 0 and level > 3 * noise:
                gain = level / noise**2
                info["gain"] = f"{gain / coerced.scale:.6g} (sky / rms^2)"
            else:
                info["gain"] = None
        if saturation is not None:
            saturation = saturation_value(saturation, unit) * internal
        prepared = _PreparedImage(subtracted, bad if bad.any() else None, error, rms, gain,
                                  image, saturation)
        return prepared, info

    @staticmethod
    def _background_map(value, unit, shape, exponent, name="background"):
        """A background (or its rms) as a float32 map in internal units."""
        value, mask = _validation.split_mask(value_in_unit(value, unit, name))
        arr = np.asarray(value)
        if arr.dtype.kind not in "iufb":
            msg = f"{name} must be a number or a 2-D array of numbers, got dtype {arr.dtype}"
            raise TypeError(msg)
        if arr.ndim == 0 and not np.isfinite(arr):
            msg = f"{name} must be finite, got {arr}"
            raise ValueError(msg)
        if arr.ndim not in (0, 2) or (arr.ndim == 2 and arr.shape != shape):
            msg = f"{name} must be a number or an array of the data's shape {shape}, got shape "
            raise ValueError(msg + f"{arr.shape}")
        arr = np.ldexp(np.asarray(arr, dtype=np.float64), -exponent).astype(np.float32)
        if mask is not None:
            arr = np.where(mask, np.float32(np.nan), arr)
        return np.broadcast_to(arr, shape)

    def _measure(self, prepared, x, y, sampler=None):
        """Per-source results; rows without a usable position are NaN and NO_POSITION."""
        located = np.isfinite(x) & np.isfinite(y)
        if located.all():
            return self._measure_located(prepared, x, y, sampler)
        inner = self._measure_located(prepared, x[located], y[located], sampler)
        out = {}
        for key, values in inner.items():
            full = np.full(x.size, np.nan) if values.dtype.kind == "f" else np.zeros(
                x.size, values.dtype)
            full[located] = values
            out[key] = full
        out["x_init"], out["y_init"] = x, y
        out["flags"][~located] |= _flags.NO_POSITION
        return out

    def _measure_located(self, prepared, x, y, sampler=None):
        n = x.size
        out = {k: np.full(n, np.nan) for k in ("x_fit", "y_fit", "flux_fit", "x_err", "y_err",
                                               "flux_err")}
        out["flags"] = np.zeros(n, dtype=np.int32)
        out["snr_core"] = np.full(n, np.nan)
        out["x_init"], out["y_init"] = x, y
        size = _stamps.STAMP_SIZE
        ref = size // 2
        core = slice(ref - _CORE_RADIUS, ref + _CORE_RADIUS + 1)
        sat = slice(ref - _SATURATION_RADIUS, ref + _SATURATION_RADIUS + 1)
        local = None
        if self.localbkg_estimator is not None and n:
            local = np.asarray(self.localbkg_estimator(prepared.subtracted, x, y,
                                                       mask=prepared.bad), dtype=np.float32)
            local = np.nan_to_num(local)
        out["flags"][_blends.core_neighbours(x, y)] |= _flags.BLENDED
        interactive = self.progress_bar and _is_terminal(sys.stderr)
        report = _progress_reporter(n, interactive)
        for start in range(0, n, self.batch_size):
            sl = slice(start, min(start + self.batch_size, n))
            bx, by = x[sl], y[sl]
            data, inside = _stamps.cutout_stamps(prepared.subtracted, bx, by, size)
            valid = inside
            if prepared.bad is not None:
                bad, _ = _stamps.cutout_stamps(prepared.bad, bx, by, size, fill=True)
                valid = inside & ~bad
            if local is not None:
                data = data - local[sl, None, None]
            if prepared.error is not None:
                error, _ = _stamps.cutout_stamps(prepared.error, bx, by, size, fill=1.0)
            else:
                rms, _ = _stamps.cutout_stamps(prepared.rms, bx, by, size, fill=1.0)
                error = _stamps.total_error(data, rms, prepared.gain)
            scale = _stamps.noise_scale(error, valid)
            psf = None
            if sampler is not None and self._n_channels == 3:
                psf = sampler.stamps(_stamps.reference_pixel(bx), _stamps.reference_pixel(by),
                                     size)
            inputs, unit = _stamps.encode_inputs(data, error, valid, scale, psf_stamps=psf,
                                                 n_channels=self._n_channels)
            usable = (valid.any(axis=(1, 2)) & np.isfinite(scale) & (scale > 0)
                      & np.isfinite(unit))
            f = np.zeros(len(scale), dtype=np.int32)
            f[~inside.all(axis=(1, 2))] |= _flags.EDGE
            f[~valid.all(axis=(1, 2)) & inside.all(axis=(1, 2))] |= _flags.MASKED
            if prepared.bad is not None:
                f[(~valid[:, core, core]).any(axis=(1, 2)) & inside[:, core, core].all(
                    axis=(1, 2))] |= _flags.CORE_MASKED | _flags.MASKED
            f[~usable] |= _flags.NO_OVERLAP
            if prepared.saturation is not None:
                raw, _ = _stamps.cutout_stamps(prepared.raw, bx, by, size, fill=-np.inf)
                f[(raw[:, sat, sat] >= prepared.saturation).any(axis=(1, 2))] |= _flags.SATURATED
            if prepared.error is None and prepared.gain is None:
                f |= _flags.NO_SOURCE_NOISE
            f[_compact(data, error, valid, ref)] |= _flags.COMPACT
            idx = np.flatnonzero(usable)
            if idx.size:
                snr_core = _stamps.core_snr(data[idx], error[idx], valid[idx])
                out["snr_core"][start + idx] = snr_core
                res = _stamps.decode_outputs(_onnx.run(self._session, inputs[idx]), unit[idx],
                                             self._card.get("sigma_calibration"), snr_core,
                                             self._card.get("flux_bias_correction"))
                rx = _stamps.reference_pixel(bx[idx])
                ry = _stamps.reference_pixel(by[idx])
                xf, yf = rx + res["dx"], ry + res["dy"]
                gl = start + idx
                out["x_fit"][gl], out["y_fit"][gl] = xf, yf
                out["flux_fit"][gl] = res["flux"]
                out["x_err"][gl], out["y_err"][gl] = res["dx_err"], res["dy_err"]
                out["flux_err"][gl] = res["flux_err"]
                shift = np.hypot(xf - bx[idx], yf - by[idx])
                f[idx[shift > self.max_shift]] |= _flags.LARGE_SHIFT
                snr = res["flux"] / res["flux_err"]
                f[idx[(snr < _SNR_RANGE[0]) | (snr > _SNR_RANGE[1])]] |= _flags.OUTSIDE_TRAINING
                f[idx[res["flux"] <= 0]] |= _flags.NONPOSITIVE_FLUX
            out["flags"][sl] |= f
            if self.progress_bar:
                report(sl.stop)
        if self.progress_bar and n and interactive:
            print(file=sys.stderr)
        return out

    def _correct_apertures(self, prepared, res):
        """Apply the per-image aperture correction to ``res`` in place; returns meta entries."""
        mode = self.aperture_correction
        if mode is False:
            return {"aperture_correction": 1.0, "aperture_correction_note": "off"}
        if mode is True or mode == "auto":
            measured = _aperture_correction.measure(
                prepared.subtracted, prepared.bad, res["x_fit"], res["y_fit"], res["flux_fit"],
                res["flux_err"], (res["flags"] & ~_flags.NO_SOURCE_NOISE) == 0,
                snr=res["snr_core"])
            factor, note = _aperture_correction.decide(measured, mode)
            if _aperture_correction.mismatch(measured):
                res["flags"] |= _flags.PSF_MISMATCH
            error = measured["error"] if factor is not None else None
            info = {"aperture_correction_measured": measured["factor"],
                    "aperture_correction_measured_err": measured["error"],
                    "aperture_correction_nstars": measured["n_stars"],
                    "aperture_correction_ncontaminated": measured["n_contaminated"],
                    "aperture_correction_radius": measured["radius"]}
        else:
            factor, error, note, info = float(mode), None, "given", {}
        if factor is not None:
            flux = res["flux_fit"]
            # The factor's own error is common to all stars of the image; it is added so
            # that each flux_err still covers the total flux.
            res["flux_err"] = np.hypot(factor * res["flux_err"],
                                       0.0 if error is None else error * flux)
            res["flux_fit"] = factor * flux
        return {"aperture_correction": 1.0 if factor is None else factor,
                "aperture_correction_note": note, **info}

    def _assemble(self, ids, x, y, res, unit, wcs, info):
        tbl = QTable()
        tbl["id"] = ids
        tbl["x_init"] = x
        tbl["y_init"] = y
        tbl["x_fit"] = res["x_fit"]
        tbl["y_fit"] = res["y_fit"]
        tbl["flux_fit"] = res["flux_fit"] if unit is None else res["flux_fit"] * unit
        tbl["x_err"] = res["x_err"]
        tbl["y_err"] = res["y_err"]
        tbl["flux_err"] = res["flux_err"] if unit is None else res["flux_err"] * unit
        tbl["flags"] = res["flags"]
        if "qfit" in res:
            tbl["qfit"] = res["qfit"]
            tbl["cfit"] = res["cfit"]
        if wcs is not None:
            tbl["sky_centroid"] = wcs.pixel_to_world(tbl["x_fit"], tbl["y_fit"])
        tbl.meta.update(self._meta(info))
        nwarn = int(np.count_nonzero(tbl["flags"] & _WARN_FLAGS))
        if nwarn:
            msg = (f"{nwarn} of {len(tbl)} sources are flagged (no usable pixels, masked core, "
                   "saturated, sharper than a PSF, or a PSF unlike any trained on); see the "
                   "'flags' column and MLPhotometry.decode_flags")
            warnings.warn(msg, FlaggedSourcesWarning, stacklevel=3)
        if len(tbl) and np.all(tbl["flags"] & _flags.NO_SOURCE_NOISE):
            msg = ("no error map, gain or sky level tells the network the sources' Poisson "
                   "noise, so flux_err is too small for bright sources; pass error= or gain=")
            warnings.warn(msg, NoSourceNoiseWarning, stacklevel=3)
        return tbl

    def _meta(self, info):
        import onnxruntime

        from asidfe_phot import __version__

        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "asidfe_phot_version": __version__,
            "onnxruntime_version": onnxruntime.__version__,
            "numpy_version": np.__version__,
            "model_name": self._card["name"],
            "model_version": self._card["version"],
            "model_sha256": self._card["sha256"],
            "providers": self.providers,
            "batch_size": self.batch_size,
            "max_shift": self.max_shift,
            **info,
        }


def _centre_offset(res, fitted, bright, min_sources=10):
    """
    Median offset (x, y) of the fitted centres from the network's, the scatter of
    their differences that the two errors do not explain, and the sources used.

    Zero offset and scatter with fewer than ``min_sources`` bright sources, or an
    offset within 3 standard errors of zero.
    """
    sel = bright & np.isfinite(res["x_fit"]) & np.isfinite(fitted["x"])
    n = int(np.count_nonzero(sel))
    if n < min_sources:
        return np.zeros(2), 0.0, n
    d = np.stack([fitted["x"][sel] - res["x_fit"][sel], fitted["y"][sel] - res["y_fit"][sel]])
    med = np.median(d, axis=1)
    mad = 1.4826 * np.median(np.abs(d - med[:, None]), axis=1)
    err = 1.2533 * mad / np.sqrt(n)
    offset = np.where(np.abs(med) > 3 * err, med, 0.0)
    explained = np.median(np.concatenate([
        np.hypot(fitted["x_err"][sel], res["x_err"][sel]),
        np.hypot(fitted["y_err"][sel], res["y_err"][sel])]))
    scatter = float(np.sqrt(max(np.mean(mad**2) - explained**2, 0.0)))
    return offset, scatter, n


def _compact(data, error, valid, ref):
    """Rows whose central 3x3 pixels are dominated by one pixel at a significant S/N."""
    box = (slice(None), slice(ref - 1, ref + 2), slice(ref - 1, ref + 2))
    d = np.where(valid[box], data[box], 0.0)
    total = d.sum(axis=(1, 2))
    noise = np.sqrt(np.where(valid[box], np.square(error[box], dtype=np.float64), 0.0).sum(
        axis=(1, 2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((total > _COMPACT_MIN_SNR * noise)
                & (d.max(axis=(1, 2)) > _COMPACT_PEAK_FRACTION * total))


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _progress_reporter(n, interactive):
    """
    Progress to stderr: one updated line on a terminal; in a log (redirected stderr),
    whole lines at each tenth, so no carriage returns land in files.
    """
    state = {"tenth": 0}

    def report(done):
        if interactive:
            print(f"\rMLPhotometry: {done}/{n} sources", end="", file=sys.stderr)
            return
        tenth = 10 * done // max(n, 1)
        if tenth > state["tenth"] or done == n:
            state["tenth"] = tenth
            print(f"MLPhotometry: {done}/{n} sources", file=sys.stderr)
    return report


def _cover_shared_light(res, x, y):
    """
    Widen the errors of core neighbours that no PSF fit split (see `_blends`), in place.
    """
    core = (res["flags"] & _flags.BLENDED) != 0
    unsplit = core & ~res.get("split", np.zeros(core.shape, bool))
    flux_extra, position_extra = _blends.shared_light(x, y, res["flux_fit"], unsplit)
    res["flux_err"] = np.hypot(res["flux_err"], flux_extra)
    res["x_err"] = np.hypot(res["x_err"], position_extra)
    res["y_err"] = np.hypot(res["y_err"], position_extra)
