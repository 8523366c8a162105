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

import copy
import os
import warnings

import numpy as np
from scipy import ndimage

# The ePSF builder lives in its own module; its names are this module's.
from asidfe_phot._epsf import OVERSAMPLING, build_epsf, select_psf_stars  # noqa: F401

__all__ = ["DEFAULT_PSF_MODEL", "PSFSampler", "build_epsf", "read_psfex", "select_psf_stars"]

#: Fine-grid samples per pixel of the tabulated PSF (cubic-spline interpolated between).
FINE = 4
#: Radius (px) of the tabulated PSF: the half-size of a 32x32 stamp.
RADIUS = 16
#: Cells (px) on which a PSF that varies across the frame is tabulated.
CELL = 128


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


# --- ePSF from the image (built in asidfe_phot._epsf) ----------------------------------------

class _DefaultAuto(str):
    """``"auto"`` as MLPhotometry's default: an ePSF only with enough stars, and silently."""

    __slots__ = ()


#: MLPhotometry's default ``psf_model``: ``"auto"``, except that an image with fewer than
#: 10 good stars is measured without a PSF and without a warning (see `build_epsf`).
DEFAULT_PSF_MODEL = _DefaultAuto("auto")


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
