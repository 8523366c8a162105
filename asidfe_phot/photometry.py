"""Machine-learning photometry: the photutils-compatible `MLPhotometry` class."""

import warnings

import numpy as np
from astropy.table import QTable
from astropy.utils.decorators import deprecated_renamed_argument
from astropy.utils.exceptions import AstropyDeprecationWarning

from asidfe_phot import (
    _aperture_correction,
    _blends,
    _network,
    _onnx,
    _psf_fit,
    _psf_mode,
    _results,
    _stamps,
)
from asidfe_phot import _photutils_api as _api
from asidfe_phot import _thresholds as _t
from asidfe_phot import flags as _flags
from asidfe_phot import psf as _psf
from asidfe_phot._detection import finder_positions
from asidfe_phot._prepare import prepare
from asidfe_phot._validation import (
    coerce_data,
    parse_positions,
    user_stacklevel,
)
from asidfe_phot.exceptions import PSFModelWarning
from asidfe_phot.models import network_file, verify_model

__all__ = ["MLPhotometry"]

#: The model card's sigma calibrations: of the network's outputs, and of the outputs of
#: the PSF mode (with a given PSF model, with ``psf_model="auto"``).
_NETWORK_CALIBRATION = "sigma_calibration"
_PSF_MODE_CALIBRATIONS = ("sigma_calibration_psf", "sigma_calibration_auto")
#: The network's own calibrations when it is given the PSF (``flux_bias_correction``,
#: ``sigma_calibration``), where a card has them apart from those without it.
_NETWORK_PSF_CALIBRATION = "network_psf_calibration"


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
    psf_model : photutils PSF model, str or path-like, optional
        The image's PSF, first as in photutils' `~photutils.psf.PSFPhotometry`:
        any photutils PSF model (`~photutils.psf.ImagePSF`, the ePSF of
        `~photutils.psf.EPSFBuilder`, `~photutils.psf.GriddedPSFModel` for a PSF
        that varies across the frame, `~photutils.psf.CircularGaussianPRF`,
        `~photutils.psf.MoffatPSF`, ...), a PSFEx ``.psf`` file, or ``"auto"``:
        an ePSF built from each image's own bright, isolated, unsaturated point
        sources (`asidfe_phot.psf.build_epsf`; the stars used are in ``meta``).
        A PSF-conditioned model (contract 3) sees it, rendered at each stamp's
        reference pixel, as an extra input; the fluxes and centres are then
        refined by a PSF fit started at the network's estimates (see Notes).
        Its ``x_0``, ``y_0`` and ``flux`` parameters' ``fixed`` are honoured
        (forced photometry, see Notes); its other parameters must be fixed.
        ``None``: the network alone. Default ``"auto"``, quietly: an image
        with fewer than 10 good stars is measured as with ``None`` (``meta``
        says ``psf_used``); pass ``"auto"`` to be warned instead. (Before 0.1
        the first argument was the network: a model name or directory given
        here still works, with a deprecation warning; use ``model=``.)
    fit_shape : int or 2-tuple of int, optional
        The box ``(ny, nx)`` (odd) of the PSF fit, as photutils'. Default
        ``2 ceil(1.5 FWHM) + 1`` px. Needs a ``psf_model``.
    finder : callable, optional
        A photutils finder (e.g. `~photutils.detection.DAOStarFinder`) used when
        ``init_params`` is not given; it runs on the background-subtracted
        image, and only its positions are used (as photutils').
    grouper : `~photutils.psf.SourceGrouper` or callable, optional
        Called as ``grouper(x, y)`` on the input positions for the
        ``group_id`` and ``group_size`` columns (an ``init_params``
        ``group_id`` wins). Without it each source is its own group (its
        ``id``), as in photutils. The groups label only: the network sees
        each source's neighbours in its stamp and the PSF fit solves all
        overlapping fluxes jointly, whatever the groups.
    fitter : None
        photutils' astropy fitter: only None (our fit is not an astropy
        fitter; any other value raises ValueError).
    fitter_maxiters : int
        Only photutils' default, 100 (the fit takes a fixed number of steps).
    xy_bounds : float or 2-tuple of float or None, optional
        The most the fitted position may move from the input, in px, per
        axis ``(x, y)`` (None: unbounded), as photutils': the PSF fit is held
        within it, and so is the network's position.
    aperture_radius : float, optional
        As photutils', the radius (px) of the circular aperture whose sum
        (less the local background) is ``flux_init`` where ``init_params``
        has no flux column: reported, and the held flux of a ``psf_model``
        whose ``flux`` is fixed. The network measures every other flux.
    local_bkg_estimator : `~photutils.background.LocalBackground`, optional
        Subtract a local annulus background per source, after the 2-D
        background (see the ``local_bkg`` column). ``localbkg_estimator`` is
        its deprecated alias.
    group_warning_threshold : int, optional
        Warn when a group has more sources than this (default 25).
    progress_bar : bool, optional
        Print progress to stderr.
    model : str or path-like, optional
        The network: a shipped model name (see `asidfe_phot.models.list_models`)
        or a model directory (``model.onnx`` + ``config.json``). Default: the
        shipped default model. Its sha256 is checked against its card.
    device_id : int, optional
        The GPU of onnxruntime's CUDA provider (default 0).
    batch_size : int, optional
        Stamps per network call; memory is bounded by this, not by the number
        of sources.
    providers : list of str, optional
        onnxruntime execution providers. Default: CUDA when onnxruntime-gpu
        and a GPU are present, else CPU.
    threads : int, optional
        CPU threads of the network (onnxruntime's intra-op threads) and of the
        background estimate. Default: all cores. Use 1 when several processes
        share the machine (one image per process).
    precision : {'fp32', 'int8'}, optional
        The network graph: ``'int8'`` runs the model's statically quantized graph
        (faster on CPU), offered only where its card records that it passed the
        parity check against fp32 (`asidfe_phot.models.network_file`).
    background_box_size : int, optional
        Mesh size (px) of the default 2-D background estimate.
    max_shift : float, optional
        Flag sources whose fitted position is further than this (px) from the input.
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
        ``sigma_calibration_auto`` with ``"auto"``; a tailored model's card
        also calibrates the network given the PSF apart). ``False``: none, the
        raw network (and PSF-fit) sigmas, e.g. to fit a new calibration.
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
        calibrations), and, when a PSF model was used, the two estimates the
        PSF mode chose from, each with the error it compared: the network's,
        ``x_fit_network, y_fit_network, flux_fit_network, x_err_network,
        y_err_network, flux_err_network``, and the PSF fit's, ``x_fit_psf``
        ... ``flux_err_psf`` (units as ``x_fit`` ... ``flux_err``; NaN where
        that estimate is missing).

    Notes
    -----
    Pixel convention (photutils'): 0-based, integer coordinates are pixel centres.

    With a PSF model, each source is fitted for flux and centre in a box of
    ``2 ceil(1.5 FWHM) + 1`` px, every other input source's model subtracted,
    starting from the network's estimates (the PSF guide of the docs has the
    details). The fitted values replace the network's where the fit is the
    more precise (a tailored model's card may weigh that choice);
    ``flux_fit`` is then the PSF model's total flux, so no aperture
    correction is measured. ``qfit`` and ``cfit`` are photutils' (NaN without
    a PSF model); `make_model_image` and `make_residual_image` render the
    last result.

    Forced photometry, as in photutils: a ``psf_model`` with ``x_0.fixed``
    and ``y_0.fixed`` keeps each position at its input (``x_fit == x_init``)
    and measures the flux of the PSF there, by a linear fit (every other
    source held at its fit); a fixed ``flux`` keeps ``flux_init``. A fixed
    parameter's error is NaN (photutils'); the flux errors are the fit's,
    grown by the root of the reduced chi^2 where it exceeds 1 (a position off
    the source's centre biases the flux low, as in photutils, and the error
    grows to cover it), without the card's calibrations. ``"auto"`` and None
    have no parameters to fix: build the PSF first (`asidfe_phot.psf.build_epsf`
    or photutils' `~photutils.psf.EPSFBuilder`), set its ``fixed`` and pass
    it. Without a usable PSF the network measures the source in its stamp
    wherever its centre lies near the input (unbiased for inputs off by up
    to ~1 px); fixed positions are then still reported as given.

    ``local_bkg`` is the whole background per pixel subtracted at each
    source, in data units: the 2-D background there plus the local
    annulus level. The fluxes are sky-subtracted: do not subtract a sky
    annulus from them again.

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

    @deprecated_renamed_argument("localbkg_estimator", "local_bkg_estimator", "0.1")
    def __init__(self, psf_model=_psf.DEFAULT_PSF_MODEL, fit_shape=None, *, finder=None,
                 grouper=None, fitter=None, fitter_maxiters=_api.FITTER_MAXITERS,
                 xy_bounds=None, aperture_radius=None, local_bkg_estimator=None,
                 group_warning_threshold=_api.GROUP_WARNING_THRESHOLD, progress_bar=False,
                 model=None, device_id=None, batch_size=2048, providers=None, threads=None,
                 precision="fp32", background_box_size=64, max_shift=_t.DEFAULT_MAX_SHIFT,
                 aperture_correction="auto", sigma_calibration=True, flux_bias_correction=True,
                 diagnostics=False):
        model, psf_model = _api.split_model_and_psf(psf_model, model, _psf.DEFAULT_PSF_MODEL)
        if int(batch_size) != batch_size or batch_size < 1:
            msg = f"batch_size must be a positive integer, got {batch_size!r}"
            raise ValueError(msg)
        finder = _api.callable_value(finder, "finder", "photutils.detection.DAOStarFinder(...)")
        grouper = _api.callable_value(grouper, "grouper",
                                      "photutils.psf.SourceGrouper(min_separation)")
        local_bkg_estimator = _api.local_bkg_estimator_value(local_bkg_estimator)
        _api.check_unsupported(fitter, fitter_maxiters)
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
        _api.fixed_parameters(self.psf_model)   # refuses free PSF-shape parameters
        self.fit_shape = _api.fit_shape_pair(fit_shape, self.psf_model)
        self.xy_bounds = _api.xy_bounds_pair(xy_bounds)
        self.aperture_radius = _api.aperture_radius_value(aperture_radius)
        self.group_warning_threshold = _api.group_threshold_value(group_warning_threshold)
        self.fitter = None
        self.fitter_maxiters = _api.FITTER_MAXITERS
        self._model_dir, self._card = verify_model(model)
        self._n_channels = _stamps.input_channels(self._card["contract"]["version"])
        self._last = None
        self._session = _onnx.create_session(
            network_file(self._model_dir, self._card, precision), providers, threads,
            self._n_channels, device_id=device_id)
        self.precision = precision
        self.device_id = device_id
        self.threads = threads
        self.batch_size = int(batch_size)
        self.progress_bar = bool(progress_bar)
        self.finder = finder
        self.grouper = grouper
        self.local_bkg_estimator = local_bkg_estimator
        self.background_box_size = int(background_box_size)
        self.max_shift = float(max_shift)
        self.aperture_correction = aperture_correction
        self.sigma_calibration = (sigma_calibration if isinstance(sigma_calibration, str)
                                  else bool(sigma_calibration))
        self.flux_bias_correction = bool(flux_bias_correction)
        self.diagnostics = bool(diagnostics)
        # psf_model="auto"'s ePSF when already built for the frame a call's image belongs to
        # (`asidfe_phot.tiles`: one ePSF per frame, not per tile); None: built per call.
        self._frame_epsf = None

    def _card_entry(self, key, psf_given=False):
        """
        A calibration of the model card, or None where it is absent or switched off
        (``sigma_calibration``, ``flux_bias_correction``): the card stays intact.

        ``psf_given``: of the network given the PSF (a PSF-conditioned model in the PSF
        mode). Its outputs differ from those without it; a card may calibrate them
        apart (``network_psf_calibration``: a tailored model, trained with its frame's
        PSF only), else the network's one calibration serves both.
        """
        if key == _NETWORK_CALIBRATION and self.sigma_calibration is False:
            return None
        if key in _PSF_MODE_CALIBRATIONS and self.sigma_calibration is not True:
            return None
        if key == "flux_bias_correction" and not self.flux_bias_correction:
            return None
        with_psf = self._card.get(_NETWORK_PSF_CALIBRATION) or {}
        if psf_given and key in with_psf:
            return with_psf[key]
        return self._card.get(key)

    @property
    def results(self):
        """The table of the last call (photutils' ``results``); None before any."""
        return None if self._last is None else self._last["results"]

    @property
    def finder_results(self):
        """
        The finder's table of the last call (photutils' ``finder_results``); None before
        any call, or when the call was given positions.
        """
        return None if self._last is None else self._last["finder_results"]

    @property
    def model_card(self):
        """A copy of the model card (dict)."""
        return dict(self._card)

    @property
    def providers(self):
        """The onnxruntime providers in use."""
        return self._session.get_providers()

    @property
    def session(self):
        """
        The onnxruntime ``InferenceSession`` that runs the network (read-only): its raw
        outputs on ready stamps, e.g. to benchmark the network alone.
        """
        return self._session

    def __repr__(self):
        return (f"<MLPhotometry(model={self._card['name']}_v{self._card['version']}, "
                f"precision={self.precision}, batch_size={self.batch_size}, "
                f"providers={self.providers}, "
                f"psf_model={self.psf_model!r}, fit_shape={self.fit_shape}, "
                f"finder={self.finder!r}, grouper={self.grouper!r}, "
                f"local_bkg_estimator={self.local_bkg_estimator!r})>")

    @property
    def localbkg_estimator(self):
        """Deprecated alias of ``local_bkg_estimator`` (photutils 3.0's spelling)."""
        msg = "localbkg_estimator is deprecated; use local_bkg_estimator"
        warnings.warn(msg, AstropyDeprecationWarning, stacklevel=2)
        return self.local_bkg_estimator

    def make_model_image(self, shape, *, psf_shape=None, include_local_bkg=False,
                         results=None):
        """
        An image of the measured sources, rendered with the PSF model.

        photutils' `PSFPhotometry.make_model_image`: each source of the last
        call (or of ``results``, a table this instance returned) with a finite
        ``x_fit, y_fit, flux_fit``, rendered with the PSF of that call (for
        ``psf_model="auto"``, the ePSF built from that image).

        Parameters
        ----------
        shape : 2-tuple of int
            The shape of the output array.
        psf_shape : int or 2-tuple of int, optional
            The region ``(ny, nx)`` around each source's centre to render.
            Default: the PSF's tabulated extent, 33x33 px.
        include_local_bkg : bool, optional
            Add each source's ``local_bkg`` (the whole background per pixel
            subtracted at the source: 2-D background plus local annulus) over
            its ``psf_shape`` region; where regions overlap it adds up, as in
            photutils. Non-finite values count as 0.
        results : `~astropy.table.QTable`, optional
            A table returned by this instance; default the last one.

        Returns
        -------
        array : 2-D `~numpy.ndarray`
            The model image, in the data's unit but without units (as photutils').

        Raises
        ------
        ValueError
            Before any call, or when the call used no PSF model.
        """
        sampler = self._last_psf_sampler()
        table = self._last["results"] if results is None else results
        return _results.model_image(shape, sampler, table,
                                    _api.half_shape(psf_shape, _psf.RADIUS), include_local_bkg)

    def make_residual_image(self, data, *, psf_shape=None, include_local_bkg=False,
                            results=None):
        """
        ``data`` minus `make_model_image` (photutils' `PSFPhotometry.make_residual_image`).

        Parameters
        ----------
        data : 2-D array, `~astropy.units.Quantity` or `~astropy.nddata.NDData`
            The image as given to the call. Its background is removed only
            with ``include_local_bkg`` (around each source), as in photutils.
        psf_shape, include_local_bkg, results
            As in `make_model_image`.

        Returns
        -------
        array : 2-D `~numpy.ndarray`, `~astropy.units.Quantity` or `~astropy.nddata.NDData`
            Of the type of ``data`` (an NDData comes back as a copy with the
            residual as its data).
        """
        model = self.make_model_image(np.shape(getattr(data, "data", data)),
                                      psf_shape=psf_shape, include_local_bkg=include_local_bkg,
                                      results=results)
        return _results.subtract(data, model)

    def _build_frame_epsf(self, data, *, mask=None, error=None, background=None, gain=None,
                          saturation=None):
        """
        ``psf_model="auto"``'s ePSF built from ``data`` (a region of a larger frame) as a
        call would build it: ``(model, meta entries)``, or None without enough stars.
        """
        coerced = coerce_data(data, mask, error, None)
        prepared, _ = prepare(coerced, background, gain, saturation, self.background_box_size,
                              threads=self.threads)
        sampler, info = _psf_mode.psf_sampler(self.psf_model, prepared)
        return None if sampler is None else (sampler.model, info)

    def _last_psf_sampler(self):
        if self._last is None:
            msg = "make_model_image needs a measurement first: call the instance on an image"
            raise ValueError(msg)
        if self._last["sampler"] is None:
            msg = ("the last measurement used no PSF model (psf_model=None, or 'auto' found "
                   "too few stars): nothing to render the sources with")
            raise ValueError(msg)
        return self._last["sampler"]

    def results_to_init_params(self, *, remove_invalid=True, reset_ids=True, results=None):
        """
        The last result as ``init_params`` for another call (photutils' method).

        ``id`` and the fitted values ``x_fit, y_fit, flux_fit`` as ``x_init,
        y_init, flux_init``; rows with a non-finite fitted value removed
        (``remove_invalid``) and then numbered from 1 (``reset_ids``).
        ``results``: a table this instance returned, instead of the last one.
        None before any call.
        """
        if results is None:
            results = None if self._last is None else self._last["results"]
        return _api.results_to_init_params(results, remove_invalid=remove_invalid,
                                           reset_ids=reset_ids)

    def decode_flags(self, flags=None, *, return_bit_values=False):
        """
        Names (or bit values) of the flags set, as `asidfe_phot.decode_flags`.

        ``flags``: an int or array; default the ``flags`` column of the last
        result (photutils' ``decode_flags()``).
        """
        if flags is None:
            if self._last is None:
                msg = "no results yet: call the instance on an image, or pass flags"
                raise ValueError(msg)
            flags = self._last["results"]["flags"]
        return _flags.decode_flags(flags, return_bit_values=return_bit_values)

    def __call__(self, data, *, mask=None, error=None, init_params=None, background=None,
                 gain=None, saturation=None, wcs=None, x=None, y=None):
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
        init_params : `~astropy.table.Table` or positions, optional
            Input positions, under any of the column names photutils'
            PSFPhotometry accepts: x in ``x_init, xinit, x, x_0, x0, xcentroid,
            x_centroid, x_peak, xcen, x_cen, xpos, x_pos, x_fit, xfit`` (y alike),
            or a ``sky_centroid`` SkyCoord column with ``wcs``; optional unique
            ``id`` (default 1..N), initial flux (``flux_init, fluxinit, flux,
            flux_0, flux0, flux_fit, fluxfit, source_sum, segment_flux,
            kron_flux``: reported as ``flux_init``; used only as the held flux
            of a ``psf_model`` whose ``flux`` is fixed, the network measuring
            every other flux afresh), ``local_bkg`` (the background per pixel
            at the source, data units: it replaces the 2-D background's level
            there) and ``group_id``. Also accepted: a pair ``(x, y)`` of arrays
            (a tuple), an (N, 2) array of (x, y) rows, a photutils aperture (its
            positions) or a pandas-like data frame. Without it, the ``finder``
            given at construction is used.
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
        x, y : float or array, optional
            Positions instead of ``init_params`` (broadcast together, as sep's).

        Returns
        -------
        `~astropy.table.QTable`
            One row per input row, in input order, photutils' columns in its
            order: ``id, group_id, group_size, local_bkg, x_init, y_init,
            [flux_init], x_fit, y_fit, flux_fit, x_err, y_err, flux_err, qfit,
            cfit, flags`` (fluxes and ``local_bkg`` in the data's unit;
            positions in pixels; ``flux_init`` when ``init_params`` or
            ``aperture_radius`` gives it; ``qfit, cfit`` NaN without a PSF
            model), ``sky_centroid`` when a WCS is known, and the
            ``diagnostics`` columns when asked for at construction. ``meta``
            records the model, its sha256, the providers, the calibrations
            applied, the gain and background used, photutils' settings, and
            the package versions.

        Raises
        ------
        ValueError, TypeError, astropy.units.UnitsError
            On bad input, with a message naming the problem.
        """
        return self._call(data, mask=mask, error=error, init_params=init_params,
                          background=background, gain=gain, saturation=saturation, wcs=wcs,
                          x=x, y=y)[0]

    def _call(self, data, *, mask=None, error=None, init_params=None, background=None, gain=None,
              saturation=None, wcs=None, x=None, y=None):
        """
        `__call__`, also returning the per-source internals (``snr_core``, ``network``,
        ``psf_fit``, in internal units). Public code uses ``diagnostics=True`` instead.
        """
        coerced = coerce_data(data, mask, error, wcs)
        found_table = None
        unit, wcs, scale = coerced.unit, coerced.wcs, coerced.scale
        init_params = _api.init_params_table(init_params, x, y)
        if init_params is None:
            if self.finder is None:
                msg = "give init_params (a table of positions) or construct with a finder"
                raise ValueError(msg)
        prepared, info = prepare(coerced, background, gain, saturation,
                                 self.background_box_size, threads=self.threads)
        if init_params is None:
            # The finder's thresholds are in the data's units: it sees the data's values.
            subtracted = (prepared.subtracted if scale == 1 else
                          np.ldexp(prepared.subtracted, coerced.exponent))
            # Positions only, as photutils takes them from a finder (its fluxes are peak
            # or aperture sums, no initial flux).
            found_x, found_y, found_table = finder_positions(self.finder, subtracted,
                                                             prepared.bad, unit)
            init_params = QTable({"x": found_x, "y": found_y})
        x, y, ids = parse_positions(init_params, wcs)
        inputs = _api.source_inputs(init_params, x, y, ids, prepared, coerced, self)
        fixed = _api.fixed_parameters(self.psf_model)
        # Input sources sharing a stamp's core: BLENDED, and their errors widened where
        # no PSF fit splits them.
        pairs = _blends.core_pairs(x, y)
        sampler, psf_info = _psf_mode.psf_sampler(self.psf_model, prepared, self._frame_epsf)
        info.update(psf_info)
        results = self._measure(prepared, x, y, pairs, sampler, inputs.local_extra)
        if sampler is not None:
            info.update(self._fit_psf(prepared, results, sampler, inputs, fixed))
            if info["psf_profile_error"] > _psf_mode.UNUSABLE_PSF_ERROR:
                # The model describes the image's point sources so badly that it would
                # mislead the network and the fit: measure as without one, and say so.
                msg = (f"the PSF model describes this image's stars to "
                       f"{100 * info['psf_profile_error']:.0f} % only (psf_profile_error); "
                       "it is not used")
                warnings.warn(msg, PSFModelWarning, stacklevel=user_stacklevel())
                info["psf_used"] = False
                sampler = None
                results = self._measure(prepared, x, y, pairs, None, inputs.local_extra)
        if sampler is None:
            info.update(_aperture_correction.apply(self.aperture_correction, prepared,
                                                   results))
        _blends.cover_shared_light(results, x, y, pairs)
        _api.hold_fixed(results, fixed, inputs.flux_init, self.xy_bounds,
                        _api.parameter_bounds(self.psf_model))
        results["local_bkg"] = inputs.local_total
        if inputs.flux_init is not None:
            results["flux_init"] = inputs.flux_init
        if scale != 1:
            # Back from the internal scale (see _validation.scale_exponent) to the data's.
            for key in ("flux_fit", "flux_err", "flux_init", "local_bkg"):
                if key in results:
                    results[key] = results[key] * scale
            info["internal_scale"] = scale
        results["group_id"], results["group_size"] = inputs.group_id, inputs.group_size
        info.update(_api.settings_meta(self, fixed))
        extra = _results.diagnostic_columns(results, scale) if self.diagnostics else {}
        table = _results.assemble(ids, x, y, results, unit, wcs,
                                  _results.meta(self, info), extra)
        self._last = {"sampler": sampler, "results": table, "unit": unit,
                      "finder_results": found_table}
        return table, results

    def _fit_psf(self, prepared, res, sampler, inputs, fixed):
        """Refine ``res`` in place by a PSF fit (see `_psf_mode.fit_psf`); meta entries."""
        auto = isinstance(self.psf_model, str)
        calibration = self._card_entry("sigma_calibration_auto" if auto
                                       else "sigma_calibration_psf")
        options = _psf_fit.FitOptions(
            self.fit_shape, free=(not fixed["flux"], not fixed["x"], not fixed["y"]),
            xy_bounds=self.xy_bounds, local_bkg=inputs.local_extra)
        margin = self._card.get("psf_mode_network_margin")
        margin = _psf_mode.NETWORK_MARGIN if margin is None else float(margin)
        return _psf_mode.fit_psf(prepared.stamp_view(), res, sampler, self.psf_model,
                                 calibration, options, flux_start=inputs.flux_init,
                                 network_margin=margin)

    def _measure(self, prepared, x, y, pairs, sampler=None, local_bkg=None):
        """Per-source results of the network (see `_network.measure`); ``pairs`` BLENDED."""
        psf_given = sampler is not None and self._n_channels == 3
        options = _network.NetworkOptions(
            self._session, self._n_channels, self.batch_size, self.max_shift,
            calibration=self._card_entry(_NETWORK_CALIBRATION, psf_given),
            flux_bias=self._card_entry("flux_bias_correction", psf_given),
            progress_bar=self.progress_bar)
        results = _network.measure(prepared.stamp_view(), x, y, options, sampler, local_bkg)
        results["flags"][pairs.ravel()] |= _flags.BLENDED
        return results


def _is_bool(value):
    return isinstance(value, (bool, np.bool_))
