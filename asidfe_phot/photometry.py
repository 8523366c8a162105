"""Machine-learning photometry: the photutils-compatible `MLPhotometry` class."""

import warnings
from datetime import UTC, datetime

import numpy as np
from astropy.table import QTable

from asidfe_phot import _aperture_correction, _blends, _network, _onnx, _psf_mode, _stamps
from asidfe_phot import _thresholds as _t
from asidfe_phot import flags as _flags
from asidfe_phot import psf as _psf
from asidfe_phot._prepare import prepare
from asidfe_phot._psf_fit import model_image
from asidfe_phot._validation import coerce_data, parse_positions, user_stacklevel
from asidfe_phot.exceptions import FlaggedSourcesWarning, NoSourceNoiseWarning, PSFModelWarning
from asidfe_phot.models import verify_model

__all__ = ["MLPhotometry"]

#: Flags serious enough for a (single, summary) warning.
_WARN_FLAGS = (_flags.NO_OVERLAP | _flags.CORE_MASKED | _flags.SATURATED | _flags.COMPACT
               | _flags.PSF_MISMATCH | _flags.NO_POSITION)
#: The model card's sigma calibrations: of the network's outputs, and of the outputs of
#: the PSF mode (with a given PSF model, with ``psf_model="auto"``).
_NETWORK_CALIBRATION = "sigma_calibration"
_PSF_MODE_CALIBRATIONS = ("sigma_calibration_psf", "sigma_calibration_auto")
#: The network's own estimates before the PSF fit, as ``diagnostics`` columns.
_NETWORK_COLUMNS = ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err")


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
    sigma_calibration : bool or "network", optional
        Apply the model card's sigma calibrations (default ``True``): the
        factors that make the predicted errors match the scatter on
        simulations, of the network's outputs (``sigma_calibration``) and of
        the PSF mode's (``sigma_calibration_psf`` with a given PSF model,
        ``sigma_calibration_auto`` with ``"auto"``). ``False``: none, the raw
        network (and PSF-fit) sigmas, e.g. to fit a new calibration.
        ``"network"``: the network's only, the PSF mode's left out (to fit
        those). Recorded in ``meta``.
    flux_bias_correction : bool, optional
        Apply the model card's ``flux_bias_correction`` of faint sources'
        fluxes (default ``True``); ``False`` gives the network's raw fluxes,
        e.g. to fit a new correction. Recorded in ``meta``.
    diagnostics : bool, optional
        Add columns for checking and calibrating the measurement (default
        ``False``): ``snr_core``, the S/N of the sum of each stamp's central
        5x5 pixels measured on the data (the variable of the model card's
        calibrations), and, when a PSF model was used, the network's own
        estimates before the PSF fit, ``x_fit_network, y_fit_network,
        flux_fit_network, x_err_network, y_err_network, flux_err_network``
        (units as ``x_fit`` ... ``flux_err``; NaN where the network gave none).

    Notes
    -----
    Pixel convention (photutils'): 0-based, integer coordinates are pixel centres.

    With a PSF model, each source is fitted for flux and centre in a box of
    ``2 ceil(1.5 FWHM) + 1`` px, every other input source's model subtracted,
    starting from the network's estimates (two passes, as DAOPHOT's ALLSTAR
    iterates). The fitted values replace the network's where the fit is
    the more precise (has the smaller error); ``flux_fit`` is then the total flux as
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
                 finder=None, localbkg_estimator=None, background_box_size=64,
                 max_shift=_t.DEFAULT_MAX_SHIFT, threads=None, aperture_correction="auto",
                 psf_model=_psf.DEFAULT_PSF_MODEL, sigma_calibration=True,
                 flux_bias_correction=True, diagnostics=False):
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
        if not (_is_bool(sigma_calibration) or (isinstance(sigma_calibration, str)
                                                and sigma_calibration == "network")):
            msg = f'sigma_calibration must be True, False or "network", got {sigma_calibration!r}'
            raise ValueError(msg)
        for name, value in (("flux_bias_correction", flux_bias_correction),
                            ("diagnostics", diagnostics)):
            if not _is_bool(value):
                msg = f"{name} must be True or False, got {value!r}"
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
        self.sigma_calibration = (sigma_calibration if isinstance(sigma_calibration, str)
                                  else bool(sigma_calibration))
        self.flux_bias_correction = bool(flux_bias_correction)
        self.diagnostics = bool(diagnostics)

    def _card_entry(self, key):
        """
        A calibration of the model card, or None where it is absent or switched off
        (``sigma_calibration``, ``flux_bias_correction``): the card stays intact.
        """
        if key == _NETWORK_CALIBRATION and self.sigma_calibration is False:
            return None
        if key in _PSF_MODE_CALIBRATIONS and self.sigma_calibration is not True:
            return None
        if key == "flux_bias_correction" and not self.flux_bias_correction:
            return None
        return self._card.get(key)

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
        image = model_image(tuple(shape), sampler, x, y, flux, _psf.RADIUS)
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
            unit; positions in pixels), ``qfit, cfit`` when a PSF model was used,
            ``sky_centroid`` when a WCS is known, and the ``diagnostics``
            columns when asked for at construction. ``meta`` records the model,
            its sha256, the providers, the calibrations applied, the gain and
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
        """
        `__call__`, also returning the per-source internals (``snr_core``, ``network``,
        ``psf_fit``, in internal units). Public code uses ``diagnostics=True`` instead.
        """
        coerced = coerce_data(data, mask, error, wcs)
        unit, wcs, scale = coerced.unit, coerced.wcs, coerced.scale
        if init_params is None:
            if self.finder is None:
                msg = "give init_params (a table of positions) or construct with a finder"
                raise ValueError(msg)
        prepared, info = prepare(coerced, background, gain, saturation,
                                 self.background_box_size)
        if init_params is None:
            # The finder's thresholds are in the data's units: it sees the data's values.
            subtracted = (prepared.subtracted if scale == 1 else
                          np.ldexp(prepared.subtracted, coerced.exponent))
            found = self.finder(subtracted, mask=prepared.bad)
            init_params = found if found is not None else QTable({"x": [], "y": []})
        x, y, ids = parse_positions(init_params, wcs)
        # Input sources sharing a stamp's core: BLENDED, and their errors widened where
        # no PSF fit splits them.
        pairs = _blends.core_pairs(x, y)
        sampler, psf_info = _psf_mode.psf_sampler(self.psf_model, prepared)
        info.update(psf_info)
        results = self._measure(prepared, x, y, pairs, sampler)
        if sampler is not None:
            info.update(self._fit_psf(prepared, results, sampler))
            if info["psf_profile_error"] > _psf_mode.UNUSABLE_PSF_ERROR:
                # The model describes the image's point sources so badly that it would
                # mislead the network and the fit: measure as without one, and say so.
                msg = (f"the PSF model describes this image's stars to "
                       f"{100 * info['psf_profile_error']:.0f} % only (psf_profile_error); "
                       "it is not used")
                warnings.warn(msg, PSFModelWarning, stacklevel=user_stacklevel())
                info["psf_used"] = False
                sampler = None
                results = self._measure(prepared, x, y, pairs, None)
        if sampler is None:
            info.update(_aperture_correction.apply(self.aperture_correction, prepared,
                                                   results))
        _blends.cover_shared_light(results, x, y, pairs)
        if scale != 1:
            # Back from the internal scale (see _validation.scale_exponent) to the data's.
            for key in ("flux_fit", "flux_err"):
                results[key] = results[key] * scale
            info["internal_scale"] = scale
        extra = self._diagnostic_columns(results, scale) if self.diagnostics else {}
        table = self._assemble(ids, x, y, results, unit, wcs, info, extra)
        self._last = {"sampler": sampler, "x": results["x_fit"], "y": results["y_fit"],
                      "flux": results["flux_fit"], "unit": unit}
        return table, results

    def _fit_psf(self, prepared, res, sampler):
        """Refine ``res`` in place by a PSF fit (see `_psf_mode.fit_psf`); meta entries."""
        auto = isinstance(self.psf_model, str)
        calibration = self._card_entry("sigma_calibration_auto" if auto
                                       else "sigma_calibration_psf")
        return _psf_mode.fit_psf(prepared, res, sampler, self.psf_model, calibration)

    def _measure(self, prepared, x, y, pairs, sampler=None):
        """Per-source results of the network (see `_network.measure`); ``pairs`` BLENDED."""
        options = _network.NetworkOptions(
            self._session, self._n_channels, self.batch_size, self.max_shift,
            calibration=self._card_entry(_NETWORK_CALIBRATION),
            flux_bias=self._card_entry("flux_bias_correction"),
            localbkg_estimator=self.localbkg_estimator, progress_bar=self.progress_bar)
        results = _network.measure(prepared, x, y, options, sampler)
        results["flags"][pairs.ravel()] |= _flags.BLENDED
        return results

    @staticmethod
    def _diagnostic_columns(res, scale):
        """
        The ``diagnostics`` columns: ``snr_core``, and the network's estimates before a
        PSF fit (``<name>_network``), fluxes back from the internal scale to the data's.
        """
        columns = {"snr_core": res["snr_core"]}
        network = res.get("network")
        if network is not None:
            for key in _NETWORK_COLUMNS:
                values = network[key]
                if key.startswith("flux") and scale != 1:
                    values = values * scale
                columns[f"{key}_network"] = values
        return columns

    def _assemble(self, ids, x, y, res, unit, wcs, info, extra=None):
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
        for name, values in (extra or {}).items():
            tbl[name] = values * unit if unit is not None and name.startswith("flux") else values
        tbl.meta.update(self._meta(info))
        nwarn = int(np.count_nonzero(tbl["flags"] & _WARN_FLAGS))
        if nwarn:
            msg = (f"{nwarn} of {len(tbl)} sources are flagged (no usable pixels, masked core, "
                   "saturated, sharper than a PSF, or a PSF unlike any trained on); see the "
                   "'flags' column and MLPhotometry.decode_flags")
            warnings.warn(msg, FlaggedSourcesWarning, stacklevel=user_stacklevel())
        if len(tbl) and np.all(tbl["flags"] & _flags.NO_SOURCE_NOISE):
            msg = ("no error map, gain or sky level tells the network the sources' Poisson "
                   "noise, so flux_err is too small for bright sources; pass error= or gain=")
            warnings.warn(msg, NoSourceNoiseWarning, stacklevel=user_stacklevel())
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
            "sigma_calibration": self.sigma_calibration,
            "flux_bias_correction": self.flux_bias_correction,
            **info,
        }


def _is_bool(value):
    return isinstance(value, (bool, np.bool_))
