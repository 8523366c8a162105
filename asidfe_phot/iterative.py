"""
Iterative photometry: photutils' `~photutils.psf.IterativePSFPhotometry` with `MLPhotometry`.

Measure, subtract the measured sources' PSF model from the image, look for new sources
in the residual, measure them, and repeat: DAOPHOT's way of finding the faint stars hidden
next to bright ones. Each pass is an `~asidfe_phot.MLPhotometry` call; this module only
chains the passes.
"""

import warnings

import numpy as np
from astropy.table import QTable, vstack
from astropy.utils.decorators import deprecated_renamed_argument

from asidfe_phot import _photutils_api as _api
from asidfe_phot import psf as _psf
from asidfe_phot._validation import user_stacklevel
from asidfe_phot.exceptions import PSFModelWarning
from asidfe_phot.photometry import MLPhotometry

__all__ = ["IterativeMLPhotometry"]

#: Keywords of a call that give the first pass's sources; later passes find their own.
_FIRST_PASS_ONLY = ("x", "y")
_MODES = ("new", "all")


class IterativeMLPhotometry:
    """
    Iterative photometry with `~asidfe_phot.MLPhotometry`, as photutils'
    `~photutils.psf.IterativePSFPhotometry`.

    The first pass measures the sources given as ``init_params`` (or found by
    ``finder``). Each later pass subtracts the sources measured so far,
    rendered with the PSF model, runs ``finder`` on that residual image and
    measures what it finds; it stops after ``maxiters`` passes or when a pass
    finds nothing new. It finds the faint sources that a finder misses next to
    bright ones (the swap of photutils' class for `~asidfe_phot.MLPhotometry`
    alone would measure the first pass's sources only).

    Parameters
    ----------
    psf_model : photutils PSF model, str or path-like, optional
        As `~asidfe_phot.MLPhotometry`'s. The measured sources are subtracted
        with it: with ``"auto"`` (default) the ePSF built from the image in the
        first pass serves every later pass, and an image on which no ePSF can
        be built gets one pass only, with a `~asidfe_phot.exceptions.PSFModelWarning`.
        ``None`` (no PSF to subtract with) is refused.
    fit_shape : int or 2-tuple of int, optional
        As `~asidfe_phot.MLPhotometry`'s.
    finder : callable
        A photutils finder (e.g. `~photutils.detection.DAOStarFinder`), run on
        the background-subtracted image of the first pass (when no
        ``init_params`` are given) and on every residual image. Required.
    grouper, fitter, fitter_maxiters, xy_bounds : optional
        As `~asidfe_phot.MLPhotometry`'s (photutils' keywords), for every pass.
        Unlike photutils, the ``'all'`` mode needs no ``grouper``.
    maxiters : int, optional
        The largest number of passes (photutils' meaning: 1 is a single
        `~asidfe_phot.MLPhotometry` call).
    mode : {'new', 'all'}, optional
        ``'new'`` (default): each pass measures only the sources new in that
        pass, on the residual image, and its rows are appended. ``'all'``:
        each pass measures all the sources found so far (the earlier ones
        starting from their fitted positions) on the original image, so
        blended neighbours are measured together; unlike photutils, no
        ``grouper`` is needed for that (the PSF fit subtracts every other
        source's model from each source's box).
    aperture_radius, local_bkg_estimator, group_warning_threshold : optional
        As `~asidfe_phot.MLPhotometry`'s (photutils' keywords), for every pass.
        Unlike photutils, ``aperture_radius`` is not required: the network
        needs no initial flux.
    sub_shape : int or 2-tuple of int, optional
        The region ``(ny, nx)`` around each source over which its model is
        subtracted (photutils' ``sub_shape``; odd numbers). Default: the PSF's
        tabulated extent, 33x33 px.
    progress_bar : bool, optional
        As `~asidfe_phot.MLPhotometry`'s.
    **options
        `~asidfe_phot.MLPhotometry`'s own keywords (``model``, ``batch_size``,
        ``providers``, ``background_box_size``, ...), for every pass.

    Raises
    ------
    ValueError
        When ``finder`` or ``psf_model`` is None, or ``maxiters``, ``mode`` or
        ``sub_shape`` is out of range.

    Notes
    -----
    The result has every `~asidfe_phot.MLPhotometry` column plus
    ``iter_detected``, the pass in which each source was found (1: given or
    found on the image). In ``'new'`` mode the ids, and the ``group_id`` of
    each later pass continue after the largest ones before it, as in
    photutils. In ``'all'`` mode every source of a pass, including those whose
    fit failed, comes back in the next (photutils drops those), so every
    given source is in the result, in its input order, first.

    In ``'new'`` mode a later source is measured on the residual image: where
    an earlier fit took some of a then unlisted neighbour's light, the
    residual has a hole, and pixels more than 10 sigma below the background
    count as dead (flagged ``MASKED``, ``CORE_MASKED``). ``'all'`` measures
    every source on the original image: the better choice for close blends.

    With ``psf_model="auto"``, the passes after the first measure with the
    first pass's ePSF as a given model (their errors are calibrated as for a
    given PSF model: the model card's ``sigma_calibration_psf``), since a
    residual image holds too few bright stars to build its own.

    The warnings of the passes whose rows are returned are emitted once each
    after the last pass, as photutils does (in ``'all'`` mode those of the
    last pass, which measured every source); the finder's warning that a
    residual holds no new source is not.

    Examples
    --------
    photutils' iterative example (its PSF user guide): three sources are
    given, the finder finds the other seven once those are subtracted.

    >>> import numpy as np
    >>> from astropy.table import QTable
    >>> from photutils.datasets import make_noise_image
    >>> from photutils.detection import DAOStarFinder
    >>> from photutils.psf import CircularGaussianPRF, make_psf_model_image
    >>> from asidfe_phot import IterativeMLPhotometry
    >>> psf_model = CircularGaussianPRF(flux=1, fwhm=2.7)
    >>> data, _ = make_psf_model_image((101, 101), psf_model, 10, model_shape=(9, 9),
    ...                                flux=(500, 700), min_separation=10, seed=0)
    >>> data += make_noise_image(data.shape, mean=0, stddev=1, seed=0)
    >>> phot = IterativeMLPhotometry(psf_model, (5, 5), finder=DAOStarFinder(10.0, 2.0))
    >>> init_params = QTable({"x": [54, 29, 80], "y": [8, 26, 29]})
    >>> tbl = phot(data, error=np.ones_like(data), init_params=init_params)
    >>> tbl["iter_detected"].tolist()
    [1, 1, 1, 2, 2, 2, 2, 2, 2, 2]
    """

    @deprecated_renamed_argument("localbkg_estimator", "local_bkg_estimator", "0.1")
    def __init__(self, psf_model=_psf.DEFAULT_PSF_MODEL, fit_shape=None, finder=None, *,
                 grouper=None, fitter=None, fitter_maxiters=_api.FITTER_MAXITERS,
                 xy_bounds=None, maxiters=3, mode="new", aperture_radius=None,
                 local_bkg_estimator=None, group_warning_threshold=_api.GROUP_WARNING_THRESHOLD,
                 sub_shape=None, progress_bar=False, **options):
        if finder is None:
            msg = ("finder cannot be None for IterativeMLPhotometry: each pass after the "
                   "first looks for new sources with it, e.g. "
                   "photutils.detection.DAOStarFinder(threshold, fwhm)")
            raise ValueError(msg)
        if psf_model is None:
            msg = ("IterativeMLPhotometry subtracts the measured sources with the PSF model, "
                   "and psf_model=None has none: give a photutils PSF model, a PSFEx file or "
                   "'auto'")
            raise ValueError(msg)
        self.maxiters = _maxiters_value(maxiters)
        if not (isinstance(mode, str) and mode in _MODES):
            msg = f"mode must be 'new' or 'all', got {mode!r}"
            raise ValueError(msg)
        self.mode = mode
        self.sub_shape = _sub_shape_value(sub_shape)
        # photutils' keywords, then MLPhotometry's own: all given to every pass.
        options = dict(grouper=grouper, fitter=fitter, fitter_maxiters=fitter_maxiters,
                       xy_bounds=xy_bounds, aperture_radius=aperture_radius,
                       local_bkg_estimator=local_bkg_estimator,
                       group_warning_threshold=group_warning_threshold,
                       progress_bar=progress_bar, **options)
        self._photometry = MLPhotometry(psf_model, fit_shape, finder=finder, **options)
        self._options = options
        self._follower_cache = None
        self._last = None

    def _follower(self, epsf):
        """
        The `~asidfe_phot.MLPhotometry` of the residual images: this one's settings, the
        PSF model given (or ``epsf``, the first pass's), and a finder that ends a pass
        on a residual where it finds nothing (rather than measure an empty list).
        """
        if epsf is not None:
            return MLPhotometry(epsf, self.fit_shape, finder=_StopWhenEmpty(self.finder),
                                **self._options)
        if self._follower_cache is None:
            self._follower_cache = MLPhotometry(self.psf_model, self.fit_shape,
                                                finder=_StopWhenEmpty(self.finder),
                                                **self._options)
        return self._follower_cache

    @property
    def photometry(self):
        """The `~asidfe_phot.MLPhotometry` instance of the first pass (and of ``'all'`` mode)."""
        return self._photometry

    @property
    def psf_model(self):
        """The PSF model (or ``"auto"``), as `~asidfe_phot.MLPhotometry` resolved it."""
        return self._photometry.psf_model

    @property
    def fit_shape(self):
        """``fit_shape`` as ``(ny, nx)``, or None (the default box)."""
        return self._photometry.fit_shape

    @property
    def finder(self):
        """The finder run on each residual image."""
        return self._photometry.finder

    @property
    def results(self):
        """The table of the last call (photutils' attribute), or None before any call."""
        return None if self._last is None else self._last["results"]

    def __repr__(self):
        return (f"<IterativeMLPhotometry(maxiters={self.maxiters}, mode={self.mode!r}, "
                f"sub_shape={self.sub_shape}, photometry={self._photometry!r})>")

    def __call__(self, data, *, mask=None, error=None, init_params=None, **options):
        """
        Measure the sources in ``data``, iterating as set at construction.

        Parameters
        ----------
        data, mask, error
            As `~asidfe_phot.MLPhotometry.__call__`; used by every pass.
        init_params : `~astropy.table.Table` or positions, optional
            The first pass's sources, as `~asidfe_phot.MLPhotometry.__call__`
            takes them (as do ``x=``, ``y=``); default: ``finder`` on the image.
            An ``id`` column must hold integers (the sources found later are
            numbered after them).
        **options
            The other keywords of `~asidfe_phot.MLPhotometry.__call__`
            (``background``, ``gain``, ``saturation``, ``wcs``, ...), used by
            every pass.

        Returns
        -------
        `~astropy.table.QTable`
            The `~asidfe_phot.MLPhotometry` columns of every source found plus
            ``iter_detected`` (after ``group_size``); the first pass's rows
            first, in input order. ``meta`` is that of the first pass
            (``'new'``) or of the last (``'all'``), plus ``psf_class``,
            ``maxiters``, ``mode``, ``sub_shape`` and ``iter_nsources`` (the
            sources found in each pass).
        """
        _check_integer_ids(init_params)
        later = {k: v for k, v in options.items() if k not in _FIRST_PASS_ONLY}
        passes = _Passes(self, data, dict(later, mask=mask, error=error))
        table = passes.measure(self._photometry, data, keep="add", mask=mask, error=error,
                               init_params=init_params, **options)
        if self.mode == "new":
            table, counts = passes.run_new(table)
        else:
            table, counts = passes.run_all(table)
        _emit_unique(passes.records)
        for note in passes.notes:
            warnings.warn(note, PSFModelWarning, stacklevel=user_stacklevel())
        table = _move_after(table, "iter_detected", "group_size")
        table.meta.update({"psf_class": type(self).__name__, "maxiters": self.maxiters,
                           "mode": self.mode, "sub_shape": self.sub_shape,
                           "iter_nsources": counts})
        self._last = {"results": table, "renderer": passes.renderer}
        return table

    def _renderer(self):
        if self._last is None:
            msg = "no results yet: call the instance on an image first"
            raise ValueError(msg)
        return self._last["renderer"]

    def make_model_image(self, shape, *, psf_shape=None, include_local_bkg=False):
        """
        An image of all the sources of the last call, rendered with the PSF model.

        As `~asidfe_phot.MLPhotometry.make_model_image`, for the sources of
        every pass (photutils' `IterativePSFPhotometry.make_model_image`).
        """
        return self._renderer().make_model_image(shape, psf_shape=psf_shape,
                                                 include_local_bkg=include_local_bkg,
                                                 results=self.results)

    def make_residual_image(self, data, *, psf_shape=None, include_local_bkg=False):
        """``data`` minus `make_model_image` (photutils' ``make_residual_image``)."""
        return self._renderer().make_residual_image(data, psf_shape=psf_shape,
                                                    include_local_bkg=include_local_bkg,
                                                    results=self.results)

    def results_to_init_params(self, *, remove_invalid=True, reset_ids=True):
        """The last result as ``init_params`` (photutils' method); None before any call."""
        if self._last is None:
            return None
        return self._photometry.results_to_init_params(remove_invalid=remove_invalid,
                                                       reset_ids=reset_ids,
                                                       results=self.results)

    def decode_flags(self, flags=None, *, return_bit_values=False):
        """Names (or bits) of the flags set; default those of the last result's rows."""
        if flags is None:
            if self._last is None:
                msg = "no results yet: call the instance on an image, or pass flags"
                raise ValueError(msg)
            flags = self.results["flags"]
        return self._photometry.decode_flags(flags, return_bit_values=return_bit_values)


class _Passes:
    """The passes of one call on one image, and the warnings of those whose rows are kept."""

    def __init__(self, owner, data, call_options):
        self.owner = owner
        self.data = data
        self.options = call_options
        self.renderer = owner.photometry     # the instance whose last call is to be rendered
        self.records = []                    # warnings of the passes whose rows are returned
        self.notes = []                      # this class's own warnings
        self._follow = None

    def measure(self, instance, data, keep, **kwargs):
        """
        ``instance(data, **kwargs)``, its warnings recorded: kept with the earlier ones
        (``keep="add"``: its rows are returned), replacing them (``"replace"``: its rows
        supersede theirs) or dropped (``"drop"``: a search whose measurements are not
        returned).
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = instance(data, **kwargs)
        if keep == "replace":
            self.records = list(caught)
        elif keep == "add":
            self.records.extend(caught)
        return table

    def _can_subtract(self, table, iteration):
        """Whether pass ``iteration``'s sources can be subtracted (a PSF measured them)."""
        if table.meta.get("psf_used", True):
            return True
        self.notes.append(
            f"IterativeMLPhotometry: pass {iteration} measured {len(table)} sources without "
            "a PSF model (psf_model='auto' built no ePSF from this image: too few good "
            "stars; or the model was unusable: see meta 'psf_used'), so they cannot be "
            "subtracted and no further source was searched for; give a psf_model (e.g. "
            "photutils.psf.CircularGaussianPRF(fwhm=...)) to iterate")
        return False

    def follow(self):
        """
        The instance for the residual images: the first's PSF model (with ``"auto"``, the
        ePSF of the first pass: a residual holds too few stars to build one), and a finder
        that ends the pass where it finds nothing.
        """
        if self._follow is None:
            first = self.owner.photometry
            if isinstance(first.psf_model, str):
                # MLPhotometry keeps the PSF of its last call: the ePSF built in the first pass.
                self._follow = self.owner._follower(first._last_psf_sampler().model)
            else:
                self._follow = self.owner._follower(None)
        return self._follow

    def _find(self, residual, keep):
        """The sources the finder sees in ``residual``, measured (None: nothing found)."""
        try:
            return self.measure(self.follow(), residual, keep, init_params=None,
                                **self.options)
        except _NothingFound:
            return None

    def run_new(self, table):
        """photutils' 'new' mode: each pass measures its new sources on the residual."""
        table["iter_detected"] = np.ones(len(table), dtype=np.int64)
        tables, counts = [table], [len(table)]
        residual, current, last = self.data, self.owner.photometry, table
        for iteration in range(2, self.owner.maxiters + 1):
            if not self._can_subtract(last, iteration - 1):
                break
            residual = current.make_residual_image(residual, psf_shape=self.owner.sub_shape)
            new = self._find(residual, keep="add")
            if new is None:
                break
            previous = vstack(tables, metadata_conflicts="silent")
            new["id"] += _largest(previous["id"])
            if "group_id" in new.colnames and "group_id" in previous.colnames:
                new["group_id"] += _largest(previous["group_id"])
            new["iter_detected"] = np.full(len(new), iteration, dtype=np.int64)
            last = new
            tables.append(new)
            counts.append(len(new))
            current = self.renderer = self.follow()
        result = vstack(tables, metadata_conflicts="silent")
        result.meta = dict(table.meta)
        return result, counts

    def run_all(self, table):
        """photutils' 'all' mode: each pass measures every source found so far on the data."""
        detected = np.ones(len(table), dtype=np.int64)
        counts = [len(table)]
        first = self.owner.photometry
        for iteration in range(2, self.owner.maxiters + 1):
            if not self._can_subtract(table, iteration - 1):
                break
            residual = first.make_residual_image(self.data, psf_shape=self.owner.sub_shape,
                                                 results=table)
            # Only the positions of the sources found are used: their measurement on the
            # residual is not returned, nor are its warnings.
            new = self._find(residual, keep="drop")
            if new is None:
                break
            table = self.measure(first, self.data, keep="replace",
                                 init_params=_next_init_params(table, new), **self.options)
            detected = np.concatenate([detected, np.full(len(new), iteration, dtype=np.int64)])
            counts.append(len(new))
        table["iter_detected"] = detected
        return table, counts


class _NothingFound(Exception):  # noqa: N818 (a signal, not an error)
    """A residual image holds no new source: the iteration ends."""


class _StopWhenEmpty:
    """The user's finder, raising `_NothingFound` where it finds nothing."""

    def __init__(self, finder):
        self.finder = finder

    def __call__(self, data, mask=None):
        with warnings.catch_warnings():
            # Nothing left to find is how the iteration ends, not a problem to report.
            warnings.filterwarnings("ignore", category=_no_detections_warning())
            found = self.finder(data, mask=mask)
        if found is None or len(found) == 0:
            raise _NothingFound
        return found

    def __repr__(self):
        return repr(self.finder)


def _next_init_params(table, new):
    """
    The sources of ``table`` at their fitted positions (their input ones where the fit
    gave none) followed by ``new``, numbered after them: the next 'all' pass's input.
    """
    init = QTable()
    init["id"] = table["id"]
    for axis in ("x", "y"):
        fitted = np.asarray(table[f"{axis}_fit"], dtype=float)
        init[f"{axis}_init"] = np.where(np.isfinite(fitted), fitted,
                                        np.asarray(table[f"{axis}_init"], dtype=float))
    # The flux too, as photutils' results_to_init_params: a model holding the flux fixed
    # keeps it.
    init["flux_init"] = table["flux_fit"]
    added = QTable()
    added["id"] = np.arange(1, len(new) + 1) + _largest(table["id"])
    added["x_init"] = np.asarray(new["x_init"], dtype=float)
    added["y_init"] = np.asarray(new["y_init"], dtype=float)
    added["flux_init"] = new["flux_fit"]
    return vstack([init, added], metadata_conflicts="silent")


def _largest(ids):
    values = np.asarray(ids)
    return int(values.max()) if values.size else 0


def _check_integer_ids(init_params):
    """The found sources are numbered after the given ones: given ids must be integers."""
    names = getattr(init_params, "colnames", None) or getattr(init_params, "columns", ())
    if "id" not in list(names):
        return
    kind = np.asarray(init_params["id"]).dtype.kind
    if kind not in "iu":
        msg = ("init_params 'id' must hold integers for IterativeMLPhotometry (the sources "
               f"found later are numbered after them), got dtype kind {kind!r}")
        raise ValueError(msg)


def _maxiters_value(maxiters):
    if (isinstance(maxiters, bool) or not np.isscalar(maxiters)
            or not isinstance(maxiters, (int, float, np.integer, np.floating))
            or not np.isfinite(maxiters) or maxiters <= 0 or maxiters != int(maxiters)):
        msg = f"maxiters must be a strictly positive integer, got {maxiters!r}"
        raise ValueError(msg)
    return int(maxiters)


def _sub_shape_value(sub_shape):
    """photutils' ``sub_shape``: None, or an odd positive int or a pair ``(ny, nx)`` of them."""
    if sub_shape is None:
        return None
    pair = np.atleast_1d(sub_shape)
    ok = (pair.ndim == 1 and pair.size in (1, 2) and pair.dtype.kind in "iuf"
          and np.all(pair == np.round(pair)) and np.all(pair >= 1) and np.all(pair % 2 == 1))
    if not ok:
        msg = f"sub_shape must be an odd positive integer or a pair (ny, nx) of them, got " \
              f"{sub_shape!r}"
        raise ValueError(msg)
    pair = np.broadcast_to(pair, 2)
    return int(pair[0]), int(pair[1])


def _no_detections_warning():
    from photutils.utils.exceptions import NoDetectionsWarning

    return NoDetectionsWarning


def _emit_unique(caught):
    """Emit each recorded warning once (as photutils' IterativePSFPhotometry does)."""
    seen = set()
    for record in caught:
        key = (record.category, str(record.message))
        if key in seen:
            continue
        seen.add(key)
        warnings.warn_explicit(record.message, record.category, record.filename,
                               record.lineno)


def _move_after(table, name, after):
    """``table`` with column ``name`` placed after ``after`` (or after ``id``)."""
    names = [n for n in table.colnames if n != name]
    anchor = after if after in names else "id"
    names.insert(names.index(anchor) + 1, name)
    return table[names]
