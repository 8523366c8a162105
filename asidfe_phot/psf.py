"""
The image's PSF: photutils PSF models, PSFEx files, and an ePSF built from the image.

`MLPhotometry` takes ``psf_model=`` as photutils' `~photutils.psf.PSFPhotometry`
does; this module turns any of those into what the network and the PSF fit
need (`PSFSampler`): the PSF on a fine grid around a position, rendered at
any sub-pixel offset. ``psf_model="auto"`` builds the ePSF from the image
itself (`build_epsf`), choosing the stars on the image, not from the input
catalogue; `read_psfex` reads a PSFEx ``.psf`` file.

Normalisation is photutils': a model with ``flux=1`` holds unit total flux, so
a PSF-fitted flux is the source's total flux as the model defines it (its
light beyond the stamp included).
"""

import contextlib
import copy
import os
import time
import warnings

import numpy as np
from scipy import ndimage

from asidfe_phot.exceptions import TooFewPSFStarsWarning

__all__ = ["DEFAULT_PSF_MODEL", "PSFSampler", "build_epsf", "read_psfex", "select_psf_stars"]

#: Fine-grid samples per pixel of the tabulated PSF (cubic-spline interpolated between).
FINE = 4
#: Radius (px) of the tabulated PSF: the half-size of a 32x32 stamp.
RADIUS = 16
#: Oversampling of the ePSF built by ``psf_model="auto"`` (see `build_epsf`).
OVERSAMPLING = 2
#: Cells (px) on which a PSF that varies across the frame is tabulated.
CELL = 128
_FWHM_PER_HFR = 2.0  # a Gaussian's FWHM / half-flux radius


def _is_varying(model):
    return hasattr(model, "grid_xypos") or type(model).__name__ in {"GriddedPSFModel",
                                                                    "STDPSFGrid"}


class PSFSampler:
    """
    A photutils PSF model tabulated for fast, vectorised rendering.

    The model is evaluated once (per ``CELL`` x ``CELL`` px cell when it varies
    across the frame, e.g. `~photutils.psf.GriddedPSFModel`) on a grid of
    ``FINE`` samples per pixel within ``RADIUS`` px of its centre, with
    ``flux=1`` (on a lattice of a quarter of a gridded model's spacing, 16 to
    ``CELL`` px, interpolated bilinearly); renderings at any sub-pixel
    position interpolate that table
    with a cubic spline.

    Parameters
    ----------
    model : photutils PSF model
        Anything with ``x_0``, ``y_0`` and ``flux`` parameters (``ImagePSF``,
        ``GriddedPSFModel``, ``CircularGaussianPRF``, ``MoffatPSF``, ...).
    """

    def __init__(self, model):
        for name in ("x_0", "y_0", "flux"):
            if name not in getattr(model, "param_names", ()):
                msg = (f"psf_model must be a photutils PSF model with x_0, y_0 and flux "
                       f"parameters (e.g. ImagePSF, GriddedPSFModel, CircularGaussianPRF); "
                       f"{type(model).__name__} has no {name!r}")
                raise TypeError(msg)
        self.model = copy.deepcopy(model)
        self.varies = _is_varying(model)
        self.cell = CELL
        if self.varies:
            # A quarter of the grid's spacing (bilinear between nodes follows the model's own
            # bilinear variation).
            xy = np.asarray(model.grid_xypos, dtype=float)
            steps = [np.diff(np.unique(xy[:, k])) for k in (0, 1)]
            spacing = min((s.min() for s in steps if s.size), default=4 * CELL)
            self.cell = int(np.clip(spacing / 4, 16, CELL))
        self._tables = {}
        self._offsets = (np.arange(-RADIUS * FINE, RADIUS * FINE + 1) / FINE)
        self.fwhm = _table_fwhm(self._table((0.0, 0.0) if not self.varies
                                            else self._centre_key())[0])

    def _centre_key(self):
        xy = np.asarray(self.model.grid_xypos, dtype=float)
        return tuple(float(v) for v in np.round(xy.mean(axis=0)))

    def node_weights(self, x, y):
        """
        Tables and weights per source: ``keys`` (n, k) into ``centres``, ``weights`` (n, k).

        A constant PSF has one table. A varying one is tabulated on a lattice of
        ``cell`` px and interpolated bilinearly between the four nodes around each
        source (as `~photutils.psf.GriddedPSFModel` does between its own nodes).
        """
        x = np.nan_to_num(np.asarray(x, dtype=float))
        y = np.nan_to_num(np.asarray(y, dtype=float))
        n = x.size
        if not self.varies:
            return np.zeros((n, 1), np.int64), np.ones((n, 1)), [(0.0, 0.0)]
        fx, fy = x / self.cell, y / self.cell
        ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
        tx, ty = fx - ix, fy - iy
        nodes = np.stack([np.stack([ix, iy], -1), np.stack([ix + 1, iy], -1),
                          np.stack([ix, iy + 1], -1), np.stack([ix + 1, iy + 1], -1)], 1)
        weights = np.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty], 1)
        pairs, inverse = np.unique(nodes.reshape(-1, 2), axis=0, return_inverse=True)
        centres = [(float(px * self.cell), float(py * self.cell)) for px, py in pairs]
        return inverse.reshape(n, 4), weights, centres

    def _per_table(self, x, y):
        """(centre, source indices, weights) for each table the sources use."""
        keys, weights, centres = self.node_weights(x, y)
        for k, centre in enumerate(centres):
            w = np.where(keys == k, weights, 0.0).sum(axis=1)
            sel = np.flatnonzero(w > 0)
            if sel.size:
                yield centre, sel, w[sel]

    def _table(self, centre):
        """(table, spline coefficients) of the PSF with flux 1 centred at ``centre``."""
        key = (round(centre[0], 3), round(centre[1], 3))
        if key not in self._tables:
            m = self.model
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                xx = key[0] + self._offsets[None, :]
                yy = key[1] + self._offsets[:, None]
                params = {n: getattr(m, n).value for n in m.param_names}
                params.update(x_0=key[0], y_0=key[1], flux=1.0)
                table = np.asarray(m.evaluate(xx, yy, *[params[n] for n in m.param_names]),
                                   dtype=np.float64)
            table = np.nan_to_num(table)
            self._tables[key] = (table, ndimage.spline_filter(table, order=3))
        return self._tables[key]

    def stamps(self, ref_x, ref_y, size=32):
        """
        The PSF centred on each reference pixel's centre: (n, size, size) float32.

        The network's PSF channel (see ``asidfe_phot._stamps.encode_psf``).
        """
        grid = (np.arange(size) - size // 2 + RADIUS) * FINE
        out = np.zeros((np.size(ref_x), size, size), dtype=np.float32)
        for centre, sel, w in self._per_table(ref_x, ref_y):
            table = self._table(centre)[0]
            out[sel] += (w[:, None, None] * table[np.ix_(grid, grid)]).astype(np.float32)
        return out

    def render(self, x, y, x0, y0, size, derivatives=False):
        """
        Values of the unit-flux PSF of sources at ``(x, y)`` in the pixels of
        ``size`` x ``size`` boxes whose first pixel is ``(x0, y0)``: (n, size, size).

        With ``derivatives``, also its derivatives with respect to x and y.
        """
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        ar = np.arange(size)
        dx = (np.asarray(x0)[:, None] + ar - x[:, None])[:, None, :]
        dy = (np.asarray(y0)[:, None] + ar - y[:, None])[:, :, None]
        cols = np.broadcast_to((dx + RADIUS) * FINE, (x.size, size, size))
        rows = np.broadcast_to((dy + RADIUS) * FINE, (x.size, size, size))
        outside = (np.abs(dx) > RADIUS) | (np.abs(dy) > RADIUS)
        values = np.zeros((x.size, size, size))
        grads = (np.zeros_like(values), np.zeros_like(values)) if derivatives else None
        h = 0.5 / FINE
        for centre, sel, w in self._per_table(x, y):
            coeffs = self._table(centre)[1]
            r, c = rows[sel], cols[sel]
            w = w[:, None, None]

            def at(rr, cc, coeffs=coeffs):
                return ndimage.map_coordinates(coeffs, [rr.ravel(), cc.ravel()], order=3,
                                               prefilter=False, mode="constant",
                                               cval=0.0).reshape(rr.shape)
            values[sel] += w * at(r, c)
            if derivatives:
                # The derivative with respect to the source's position is minus the profile's.
                grads[0][sel] -= w * (at(r, c + h * FINE) - at(r, c - h * FINE)) / (2 * h)
                grads[1][sel] -= w * (at(r + h * FINE, c) - at(r - h * FINE, c)) / (2 * h)
        values = np.where(outside, 0.0, values)
        if derivatives:
            return values, np.where(outside, 0.0, grads[0]), np.where(outside, 0.0, grads[1])
        return values



def _table_fwhm(table):
    """FWHM (px) of a fine table: the diameter of the area above half the peak."""
    peak = table.max()
    if not peak > 0:
        return np.nan
    area = np.count_nonzero(table >= 0.5 * peak) / FINE**2
    return float(2 * np.sqrt(area / np.pi))


# --- PSFEx -----------------------------------------------------------------------------------

def read_psfex(path, oversampling=4, grid_size=3):
    """
    A photutils PSF model from a PSFEx ``.psf`` file.

    A constant PSF (``POLDEG`` 0, or no context) becomes an
    `~photutils.psf.ImagePSF`; one that varies with ``X_IMAGE, Y_IMAGE``
    becomes a `~photutils.psf.GriddedPSFModel` of ``grid_size`` x ``grid_size``
    PSFs over the range PSFEx fitted (converted to 0-based pixels). The PSFEx
    sampling (``PSF_SAMP``, any value) is resampled to ``oversampling``
    samples per pixel; each PSF is normalised to unit total flux.
    """
    from astropy.io import fits
    from astropy.nddata import NDData
    from photutils.psf import GriddedPSFModel, ImagePSF

    with fits.open(path) as hdul:
        hdu = hdul["PSF_DATA"] if "PSF_DATA" in hdul else hdul[1]
        header = hdu.header
        basis = np.asarray(hdu.data["PSF_MASK"][0], dtype=np.float64)
    samp = float(header["PSF_SAMP"])
    if basis.ndim == 2:
        basis = basis[None]
    naxis = int(header.get("POLNAXIS", 0))
    context = []
    for i in range(1, naxis + 1):
        name = header[f"POLNAME{i}"].strip()
        if name not in ("X_IMAGE", "Y_IMAGE"):
            msg = f"{path}: PSFEx context {name!r} is not supported (only X_IMAGE, Y_IMAGE)"
            raise ValueError(msg)
        context.append((float(header[f"POLZERO{i}"]), float(header[f"POLSCAL{i}"])))
    degree = int(header.get("POLDEG1", 0)) if naxis else 0

    def image_at(x1, y1):
        """PSFEx's PSF at 1-based (x1, y1), resampled to ``oversampling``."""
        if naxis == 0 or degree == 0:
            psf = basis[0]
        else:
            u = (x1 - context[0][0]) / context[0][1]
            v = (y1 - context[1][0]) / context[1][1]
            # PSFEx's term order: u^i v^j with i + j <= degree, i fastest.
            terms = [u**i * v**j for j in range(degree + 1) for i in range(degree + 1 - j)]
            psf = np.tensordot(np.asarray(terms), basis[:len(terms)], axes=1)
        n = psf.shape[0]
        half = (n // 2) * samp  # image pixels covered on each side
        m = int(np.floor(half * oversampling))
        fine = np.arange(-m, m + 1) / oversampling / samp + n // 2
        out = ndimage.map_coordinates(psf, np.meshgrid(fine, fine, indexing="ij"), order=3,
                                      mode="constant", cval=0.0)
        return out * oversampling**2 / out.sum()

    if naxis == 0 or degree == 0:
        return ImagePSF(image_at(0.0, 0.0), oversampling=oversampling)
    (x0, xs), (y0, ys) = context
    xs_ = x0 + np.linspace(-0.5, 0.5, grid_size) * xs
    ys_ = y0 + np.linspace(-0.5, 0.5, grid_size) * ys
    data, xy = [], []
    for yv in ys_:
        for xv in xs_:
            data.append(image_at(xv, yv))
            xy.append((xv - 1.0, yv - 1.0))  # PSFEx is 1-based
    nd = NDData(np.array(data), meta={"grid_xypos": xy, "oversampling": oversampling})
    return GriddedPSFModel(nd)


# --- ePSF from the image ----------------------------------------------------------------------

def _half_flux_radius(stamps, radius, fraction=0.5):
    """
    Half-flux radius (px) of background-subtracted stamps within ``radius``.

    Pixels are taken in order of distance from the central pixel, the k-th
    standing for the disc of area k (radius ``sqrt(k / pi)``), so the radius
    is continuous even when the central pixel holds half the light
    (undersampled images), where pixel-centre distances jump from 0 to 1.
    """
    n, size, _ = stamps.shape
    c = size // 2
    g = np.arange(size) - c
    r = np.hypot(g[:, None], g[None, :])
    order = np.argsort(r.ravel(), kind="stable")
    keep = r.ravel()[order] <= radius
    flux = np.clip(stamps.reshape(n, -1)[:, order][:, keep], 0, None)
    cum = np.cumsum(flux, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = cum / cum[:, -1:]
    edges = np.sqrt(np.arange(1, frac.shape[1] + 1) / np.pi)
    k = np.argmax(frac >= fraction, axis=1)
    prev_frac = np.where(k > 0, frac[np.arange(n), k - 1], 0.0)
    prev_edge = np.where(k > 0, edges[k - 1], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (fraction - prev_frac) / (frac[np.arange(n), k] - prev_frac)
    # Within the first pixel the enclosed light grows as the area.
    first = k == 0
    t = np.where(first, np.sqrt(np.clip(fraction / frac[:, 0], 0, 1)), t)
    return prev_edge + t * (edges[k] - prev_edge)


def select_psf_stars(data, error, bad=None, *, saturation=None, max_stars=80, min_snr=30.0):
    """
    Bright, unsaturated, isolated point sources of an image, chosen on the image.

    Local maxima of S/N above ``min_snr`` (in the peak pixel) are kept when no
    brighter pixel, masked pixel or frame edge lies near them, their core is
    not flat (saturated) and not above ``saturation``, not sharper than a
    point source (cosmic rays, hot pixels), and their concentration lies on
    the point-source locus: the densest narrow range, which galaxies (less
    concentrated, scattered) do not form.

    Returns
    -------
    x, y : arrays
        Peak positions of the chosen stars (brightest first).
    info : dict
        ``hfr`` (median half-flux radius of the chosen stars, px), ``n_candidates``,
    ``n_locus``.
    """
    ny, nx = data.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(np.isfinite(data) & (error > 0), data / error, 0.0)
    if bad is not None:
        snr = np.where(bad, 0.0, snr)
    peaks = (snr >= min_snr) & (snr == ndimage.maximum_filter(snr, size=5, mode="constant"))
    py, px = np.nonzero(peaks)
    order = np.argsort(-snr[py, px])[:3000]
    py, px = py[order], px[order]
    info = {"n_candidates": int(px.size), "n_locus": 0, "hfr": np.nan}
    if px.size == 0:
        return px.astype(float), py.astype(float), info
    h = 12
    ok = (px >= h) & (px < nx - h) & (py >= h) & (py < ny - h)
    px, py = px[ok], py[ok]
    rows = py[:, None] + np.arange(-h, h + 1)
    cols = px[:, None] + np.arange(-h, h + 1)
    stamps = data[rows[:, :, None], cols[:, None, :]].astype(np.float64)
    if bad is not None:
        near_bad = bad[rows[:, :, None], cols[:, None, :]][:, h - 6:h + 7, h - 6:h + 7].any(
            axis=(1, 2))
    else:
        near_bad = np.zeros(px.size, bool)
    peak = stamps[:, h, h]
    # Isolation: nothing above 5 % of the peak beyond the core (another source, or a
    # galaxy's extended light), within the box.
    g = np.arange(-h, h + 1)
    r = np.hypot(g[:, None], g[None, :])
    hfr = _half_flux_radius(stamps, h)
    outer = stamps * (r[None] > np.clip(3 * hfr, 4, 10)[:, None, None])
    isolated = outer.max(axis=(1, 2)) < 0.05 * peak
    # Saturated cores are flat: the 4 neighbours of the peak almost as high as it.
    neighbours = np.stack([stamps[:, h - 1, h], stamps[:, h + 1, h], stamps[:, h, h - 1],
                           stamps[:, h, h + 1]], axis=1)
    flat = neighbours.min(axis=1) > 0.97 * peak
    # Sharper than a point source: hot pixels and cosmic rays (the peak holds over 70 % of
    # the central 3x3 sum; a pixel-integrated PSF of FWHM 1 px holds at most ~64 %).
    sharp = peak > 0.7 * stamps[:, h - 1:h + 2, h - 1:h + 2].sum(axis=(1, 2))
    good = isolated & ~flat & ~sharp & ~near_bad & np.isfinite(hfr)
    if saturation is not None:
        good &= peak < 0.9 * saturation
    cand = np.flatnonzero(good)
    if cand.size == 0:
        return np.zeros(0), np.zeros(0), info
    # The point-source locus in concentration (light in the central 3x3 over the 7x7):
    # the same for every star whatever its sub-pixel phase, lower for galaxies, higher
    # for cosmic rays; measured in few pixels, so little affected by noise. The locus is
    # the narrowest window (10 %) holding the most candidates.
    conc = (stamps[:, h - 1:h + 2, h - 1:h + 2].sum(axis=(1, 2))
            / stamps[:, h - 3:h + 4, h - 3:h + 4].sum(axis=(1, 2)))
    cand = cand[(conc[cand] > 0) & (conc[cand] <= 1)]
    if cand.size == 0:
        return np.zeros(0), np.zeros(0), info
    logs = np.sort(np.log(conc[cand]))
    width = np.log(1.10)
    counts = np.searchsorted(logs, logs + width, side="right") - np.arange(logs.size)
    start = int(np.argmax(counts))
    centre = float(np.median(logs[start:start + counts[start]]))
    on_locus = cand[np.abs(np.log(conc[cand]) - centre) <= width / 2 * 1.5]
    locus = float(np.median(hfr[on_locus])) if on_locus.size else np.nan
    info.update(hfr=locus, n_locus=int(on_locus.size))
    chosen = on_locus[:max_stars]  # already brightest first
    return px[chosen].astype(float), py[chosen].astype(float), info


class _DefaultAuto(str):
    """``"auto"`` as MLPhotometry's default: an ePSF only with enough stars, and silently."""

    __slots__ = ()


#: MLPhotometry's default ``psf_model``: ``"auto"``, except that an image with fewer than
#: 10 good stars is measured without a PSF and without a warning (see `build_epsf`).
DEFAULT_PSF_MODEL = _DefaultAuto("auto")


def build_epsf(data, error, bad=None, *, saturation=None, max_stars=80, min_stars=10,
               maxiters=6, quiet=False):
    """
    The image's ePSF, built with photutils' `~photutils.psf.EPSFBuilder` from stars
    chosen on the image (`select_psf_stars`).

    The oversampling is 2 (`OVERSAMPLING`): on undersampled images (half-flux
    radius below 1.2 px) 4 leaves sub-pixels without data and distorts the
    core, and on well-sampled ones, with the at most 80 stars used, 4 measured
    worse and 13x slower (see the code). The ePSF's
    footprint is 2 ceil(4 FWHM) + 1 px (15 to 33); it is recentred on its
    first moment (the convention of the network's positions), and its
    normalisation includes the light the stars show beyond the footprint
    (`_footprint_fraction`, when measured to 1 %), so fitted fluxes are
    total fluxes.

    Parameters
    ----------
    data : 2-D array
        Background-subtracted image.
    error : 2-D array
        1-sigma error per pixel.
    bad : 2-D bool array, optional
        Pixels to ignore.

    quiet : bool
        MLPhotometry's default mode: build only from ``min_stars`` stars, without a
        warning (an image without enough stars is measured without a PSF).

    Returns
    -------
    epsf : `~photutils.psf.ImagePSF` or None
        None when fewer than 3 stars qualify (``min_stars`` when ``quiet``).
    info : dict
        Stars used (``psf_stars_x``, ``psf_stars_y``), their number, the locus
        half-flux radius, the oversampling, the footprint and the build time.
    """
    from photutils.psf import EPSFBuilder, ImagePSF

    t0 = time.perf_counter()
    x, y, sel = select_psf_stars(data, error, bad, saturation=saturation, max_stars=max_stars)
    info = {"psf_model": "auto", "psf_nstars": int(x.size), "psf_hfr": sel["hfr"],
            "psf_candidates": sel["n_candidates"]}
    if x.size < min_stars and not quiet:
        msg = (f'psf_model="auto" found {x.size} isolated, unsaturated point sources '
               f"(wants {min_stars}); " + ("the ePSF may be noisy" if x.size >= 3 else
                                           "no PSF is used"))
        warnings.warn(msg, TooFewPSFStarsWarning, stacklevel=3)
    if x.size < (min_stars if quiet else 3):
        info["psf_time_s"] = time.perf_counter() - t0
        return None, info
    # 2: on undersampled images 4 leaves sub-pixels without data and distorts the core; on
    # well-sampled ones, with the at most 80 stars used, 4 was both worse and slower
    # (stars injected into the NTT frame, S/N > 300: flux MARE 0.0087 against 0.0032,
    # 18 s against 1.4 s), its sub-pixels too thinly filled.
    oversampling = OVERSAMPLING
    fwhm = _FWHM_PER_HFR * sel["hfr"]
    size = int(np.clip(2 * np.ceil(4 * fwhm) + 1, 15, 33))
    stars = _epsf_stars(data, bad, x, y, size)
    if stars is None:
        info["psf_time_s"] = time.perf_counter() - t0
        return None, info
    builder = EPSFBuilder(oversampling=oversampling, maxiters=maxiters, progress_bar=False,
                          smoothing_kernel="quartic",
                          recentering_boxsize=(5, 5) if fwhm < 4 else (7, 7))
    with warnings.catch_warnings(), _fast_fill_of_empty_subpixels():
        warnings.simplefilter("ignore")
        epsf = builder(stars).epsf
    epsf = _recentred(epsf, fwhm)
    inside, inside_err, n_used = _footprint_fraction(data, bad, x, y, size)
    if np.isfinite(inside) and inside_err < _MAX_FRACTION_ERROR and 0.8 < inside <= 1.0:
        # The stars hold light beyond the footprint: the model's total includes it.
        epsf = ImagePSF(epsf.data * inside, oversampling=epsf.oversampling, origin=epsf.origin)
        info["psf_footprint_fraction"] = inside
    else:
        info["psf_footprint_fraction"] = 1.0
    info.update(psf_footprint_fraction_measured=inside, psf_footprint_fraction_err=inside_err,
                psf_footprint_fraction_nstars=n_used)
    info.update(psf_oversampling=oversampling, psf_footprint=size,
                psf_stars_x=x.tolist(), psf_stars_y=y.tolist(),
                psf_time_s=round(time.perf_counter() - t0, 3))
    return epsf, info


@contextlib.contextmanager
def _fast_fill_of_empty_subpixels():
    """
    EPSFBuilder with empty ePSF sub-pixels filled by a normalised convolution.

    Sub-pixels that no star covers at the right phase (the grid's rim always;
    inside too with few stars) are filled each iteration, by default with a
    2-D cubic (Clough-Tocher) interpolation over the whole grid: 90 % of the
    build time (8 s of 9 for a 33 px footprint). A Gaussian-weighted mean of
    the valid neighbours costs milliseconds and, unlike the nearest value
    (tried: it shifted the ePSF's centre by 0.15 px), keeps the core
    symmetric. Private photutils API: left alone if absent.
    """
    from photutils.psf import epsf_builder

    original = getattr(epsf_builder, "_interpolate_missing_data", None)
    if original is None:
        yield
        return

    def smooth_fill(data, mask, method="cubic"):
        data = np.array(data, dtype=float)
        if not mask.any() or mask.all():
            return original(data, mask, method=method)
        valid = (~mask).astype(float)
        values = np.where(mask, 0.0, data)
        out = data.copy()
        # Normalised convolution: each empty sub-pixel gets the Gaussian-weighted mean of
        # its valid neighbours (widening until every hole is reached; the nearest value
        # fills what stays out of reach).
        for sigma in (1.0, 2.0, 4.0):
            num = ndimage.gaussian_filter(values, sigma, mode="constant")
            den = ndimage.gaussian_filter(valid, sigma, mode="constant")
            ok = mask & (den > 1e-3)
            out[ok] = num[ok] / den[ok]
            mask = mask & ~ok
            if not mask.any():
                return out
        index = ndimage.distance_transform_edt(mask, return_distances=False,
                                               return_indices=True)
        return out[tuple(index)]

    epsf_builder._interpolate_missing_data = smooth_fill
    try:
        yield
    finally:
        epsf_builder._interpolate_missing_data = original


def _epsf_stars(data, bad, x, y, size):
    """
    `~photutils.psf.EPSFStars` of ``size`` px cutouts, each minus its own sky.

    The sky is the clipped median of the cutout's 2 px rim: what the mesh
    background leaves (nebulosity, a galaxy's halo, gradients) would
    otherwise become ePSF wings. Each cutout is a copy, so overlapping
    cutouts of close stars do not share a correction; masked pixels get
    zero weight. None with fewer than 3 cutouts inside the image.
    """
    from photutils.psf import EPSFStar, EPSFStars

    half = size // 2
    ny, nx = data.shape
    stars = []
    for xc, yc in zip(x, y):
        ix, iy = int(np.floor(xc + 0.5)), int(np.floor(yc + 0.5))
        if ix - half < 0 or iy - half < 0 or ix + half >= nx or iy + half >= ny:
            continue
        cut = np.array(data[iy - half:iy + half + 1, ix - half:ix + half + 1], dtype=np.float64)
        weights = np.ones_like(cut)
        if bad is not None:
            weights[bad[iy - half:iy + half + 1, ix - half:ix + half + 1]] = 0.0
        cut[weights == 0] = 0.0
        rim = np.concatenate([cut[:2].ravel(), cut[-2:].ravel(), cut[2:-2, :2].ravel(),
                              cut[2:-2, -2:].ravel()])
        cut -= _clipped_median(rim)
        stars.append(EPSFStar(cut, weights=weights,
                              cutout_center=(xc - (ix - half), yc - (iy - half)),
                              origin=(ix - half, iy - half)))
    return EPSFStars(stars) if len(stars) >= 3 else None


def _clipped_median(values, sigma=3.0, iters=5):
    values = values[np.isfinite(values)]
    for _ in range(iters):
        med = np.median(values)
        mad = 1.4826 * np.median(np.abs(values - med))
        keep = np.abs(values - med) <= sigma * max(mad, 1e-30)
        if keep.all() or keep.sum() < 5:
            break
        values = values[keep]
    return float(np.median(values)) if values.size else 0.0


#: The footprint fraction is applied only when measured this well (standard error).
_MAX_FRACTION_ERROR = 0.01


def _footprint_fraction(data, bad, x, y, size):
    """
    Fraction of the PSF stars' light inside the ePSF's square footprint.

    Each star's footprint sum against a circular aperture of 2.5 times the
    footprint's half-size (a local sky annulus subtracted from both), for the
    stars free of other sources' light out to the annulus (image-based, as the
    aperture correction decides). Robust mean over stars, its standard error,
    and the number of stars used.
    """
    from asidfe_phot import _aperture_correction as ap

    half = size // 2
    radius = min(2.5 * half, 40.0)
    ny, nx = data.shape
    reach = radius + ap.SKY_GAP + ap.SKY_WIDTH + 2
    ok = (x >= reach) & (y >= reach) & (x < nx - reach) & (y < ny - reach)
    x, y = x[ok], y[ok]
    if x.size < 5:
        return np.nan, np.inf, int(x.size)
    sky, sky_std = ap._local_sky(data, bad, x, y, radius + ap.SKY_GAP,
                                 radius + ap.SKY_GAP + ap.SKY_WIDTH)
    clean = ~ap._contaminated(data, bad, x, y, 1.2 * half, radius + ap.SKY_GAP + ap.SKY_WIDTH,
                              sky_std)
    x, y, sky = x[clean], y[clean], sky[clean]
    if x.size < 5:
        return np.nan, np.inf, int(x.size)
    total = ap._growth(data, bad, x, y, [radius])[:, 0] - sky * np.pi * radius**2
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    box = np.array([data[b - half:b + half + 1, a - half:a + half + 1].sum(dtype=np.float64)
                    for a, b in zip(ix, iy)]) - sky * size**2
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = box / total
    frac = frac[np.isfinite(frac)]
    if frac.size < 5:
        return np.nan, np.inf, int(frac.size)
    med = np.median(frac)
    mad = 1.4826 * np.median(np.abs(frac - med))
    keep = frac[np.abs(frac - med) <= 3 * max(mad, 1e-3)]
    return float(np.mean(keep)), float(np.std(keep) / np.sqrt(keep.size)), int(keep.size)


def _recentred(epsf, fwhm):
    """The ePSF shifted so that its first moment (within 3 FWHM) is its centre.

    EPSFBuilder centres by its recentring function on a small box; an
    asymmetric core then leaves the first moment off by ~0.1 px, and
    positions follow the model's centre. The first moment is the convention
    of the network's training truth and of most catalogues.
    """
    from photutils.psf import ImagePSF

    data = np.asarray(epsf.data, dtype=np.float64)
    o = int(np.atleast_1d(epsf.oversampling)[0])
    oy, ox = (np.asarray(epsf.origin, dtype=float)[::-1] if epsf.origin is not None
              else (np.array(data.shape, float) - 1) / 2)
    yy, xx = np.indices(data.shape, dtype=float)
    r = np.hypot(xx - ox, yy - oy) / o
    w = np.clip(data, 0, None) * (r <= max(3 * fwhm, 3.0))
    for _ in range(3):
        cx = (w * xx).sum() / w.sum() - ox
        cy = (w * yy).sum() / w.sum() - oy
        if np.hypot(cx, cy) < 1e-3 * o:
            break
        data = ndimage.shift(data, (-cy, -cx), order=3, mode="constant", cval=0.0)
        w = np.clip(data, 0, None) * (r <= max(3 * fwhm, 3.0))
    # Noise and the spline shift leave negative lobes around sharp (undersampled) cores; a
    # PSF has none there, and a fit weights them heavily where the sky is quiet.
    data = np.where((r <= max(fwhm, 1.5)) & (data < 0), 0.0, data)
    # The wings of an ePSF from a few dozen stars are mostly noise: beyond 2 FWHM they are
    # replaced by their azimuthal average (blended in up to 2.5 FWHM), which keeps their
    # light and removes the noise; the core keeps its shape (asymmetry, ellipticity).
    yy, xx = np.indices(data.shape, dtype=float)
    r = np.hypot(xx - ox, yy - oy) / o
    ring = np.floor(r * 2).astype(int)   # half-pixel annuli
    profile = (np.bincount(ring.ravel(), data.ravel())
               / np.maximum(np.bincount(ring.ravel()), 1))
    blend = np.clip((r - 2 * fwhm) / (0.5 * fwhm), 0, 1)
    data = (1 - blend) * data + blend * profile[ring]
    data = data * (o * o) / data.sum()
    return ImagePSF(data, oversampling=o, origin=(ox, oy))


def resolve_psf_model(psf_model):
    """A photutils model (or None, or "auto") from what the user passed as ``psf_model``."""
    if psf_model is None or (isinstance(psf_model, str) and psf_model == "auto"):
        return psf_model
    if isinstance(psf_model, (str, os.PathLike)):
        path = os.fspath(psf_model)
        if not os.path.exists(path):
            msg = f'psf_model: no file {path!r} (give "auto", a PSFEx .psf file or a model)'
            raise FileNotFoundError(msg)
        return read_psfex(path)
    PSFSampler(psf_model)  # raises TypeError on a model without x_0, y_0, flux
    return psf_model
