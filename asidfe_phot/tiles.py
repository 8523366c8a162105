"""
Frames larger than memory, measured tile by tile.

`measure_tiled` reads a frame one overlapping tile at a time (a FITS HDU's ``section``,
or any array that reads a slice on demand: `numpy.memmap`, an h5py or zarr dataset)
and runs an `~asidfe_phot.MLPhotometry` on each: memory is set by the tile size, not by
the frame's. Each source is measured in the one tile whose core holds
its input position; the tile's margin (default two background meshes) keeps its stamp,
its PSF-fit box and its neighbours (measured along, then dropped) whole, so a source is
measured as on the whole frame except for what each tile estimates from its own pixels:

* the 2-D background mesh (its cells near a tile's edge see the margin, not the frame);
* ``psf_model="auto"``'s ePSF: built once, from the frame's central region of up to
  `EPSF_REGION` px a side (a tile alone often lacks the ten isolated bright stars it
  needs), and used for every tile, as the whole frame's call builds one; per tile only
  when that region has too few stars;
* the aperture correction (per tile, where no PSF is used);
* the gain when estimated from the sky (sky / rms^2).

With a given ``background`` and a given or header gain, and ``psf_model=None``, a tile's
stamps are the whole frame's and the tables are identical (tested).
"""

import numpy as np
from astropy.table import QTable, vstack

from asidfe_phot._photutils_api import init_params_table
from asidfe_phot._validation import parse_positions

__all__ = ["central_region", "measure_tiled", "tile_grid"]

#: Side (px) of the central region ``psf_model="auto"``'s one ePSF is built from.
EPSF_REGION = 4096
#: Position columns a result holds in the frame's pixels (shifted back from the tile's).
_POSITION_COLUMNS = ("x_init", "y_init", "x_fit", "y_fit")


def tile_grid(shape, tile, margin):
    """
    The tiles of a frame of ``shape``: ``(core, region)`` slice pairs, row-major; cores
    ``tile`` x ``tile`` px (smaller at the far edges) cover the frame once, and each region
    is its core grown by ``margin`` px, clipped to the frame.
    """
    ny, nx = shape
    out = []
    for y0 in range(0, ny, tile):
        for x0 in range(0, nx, tile):
            y1, x1 = min(y0 + tile, ny), min(x0 + tile, nx)
            core = (slice(y0, y1), slice(x0, x1))
            region = (slice(max(y0 - margin, 0), min(y1 + margin, ny)),
                      slice(max(x0 - margin, 0), min(x1 + margin, nx)))
            out.append((core, region))
    return out


def central_region(shape, side):
    """The central ``side`` x ``side`` block of a frame of ``shape`` (slices, clipped)."""
    return tuple(slice(max(n // 2 - side // 2, 0), min(n // 2 - side // 2 + side, n))
                 for n in shape)


def _read(array, region):
    """``array[region]`` as an in-memory array (None stays None, a number stays)."""
    if array is None or len(getattr(array, "shape", ())) == 0:
        return array
    block = array[region]
    return np.asanyarray(block.compute() if hasattr(block, "compute") else block)


def measure_tiled(phot, data, init_params=None, *, tile=4096, margin=None, mask=None,
                  error=None, background=None, gain=None, saturation=None, wcs=None,
                  unit=None, progress=None):
    """
    Measure a frame tile by tile, reading one tile (plus margin) at a time.

    Parameters
    ----------
    phot : `~asidfe_phot.MLPhotometry`
        Its finder finds the sources when ``init_params`` is None (per tile; a detection
        is kept by the tile whose core holds it).
    data : 2-D array-like
        Anything that reads ``data[rows, cols]`` on demand: a `numpy.memmap`, a FITS
        HDU's ``section`` (``fits.open(path)[0].section``), an h5py / zarr
        dataset, a Dask array, or an ordinary array.
    init_params : table or positions, optional
        As `~asidfe_phot.MLPhotometry.__call__` takes them, in the frame's pixels.
    tile : int
        Side of a tile's core, px.
    margin : int, optional
        Pixels read around each core. Default: two background meshes, at least 64 px
        (a stamp's half-size is 16, a PSF fit's paint box at most 16).
    mask, error, background : 2-D array-like or number, optional
        As `~asidfe_phot.MLPhotometry.__call__`'s, read tile by tile like ``data``.
    gain, saturation : float, optional
    wcs : `~astropy.wcs.WCS`, optional
        The frame's; each tile gets its slice.
    unit : `~astropy.units.Unit`, optional
        The data's unit (each tile is read as a Quantity of it), for arrays without one.
    progress : callable, optional
        Called as ``progress(done, total)`` after each tile.

    Returns
    -------
    `~astropy.table.QTable`
        Every input source once, in input order, with its ``id``; positions in the frame's
        pixels; ``group_id`` unique across tiles. ``meta["tiles"]`` lists each tile's
        origin, size, sources and its own meta entries that differ between tiles
        (``gain``, ``psf_*``, ``aperture_correction*``).
    """
    shape = tuple(int(n) for n in data.shape)
    if len(shape) != 2:
        msg = f"measure_tiled needs a 2-D image, got shape {shape}"
        raise ValueError(msg)
    tile = int(tile)
    if tile < 64:
        msg = f"tile must be at least 64 px, got {tile}"
        raise ValueError(msg)
    margin = max(2 * int(phot.background_box_size), 64) if margin is None else int(margin)
    params = init_params_table(init_params, None, None)
    if params is not None:
        x, y, ids = parse_positions(params, wcs)
        order_key = np.arange(x.size)
        params = _positions_only(params, x, y, ids)
    tables, tile_meta, group_offset = [], [], 0
    grid = tile_grid(shape, tile, margin)
    frame = (slice(0, shape[0]), slice(0, shape[1]))
    frame_epsf = None
    if isinstance(phot.psf_model, str) and len(grid) > 1:
        centre = central_region(shape, max(tile, EPSF_REGION))
        region_data = _read(data, centre)
        frame_epsf = phot._build_frame_epsf(
            region_data if unit is None else region_data * unit, mask=_read(mask, centre),
            error=_read(error, centre), background=_read(background, centre), gain=gain,
            saturation=saturation)
        del region_data
    for done, (core, region) in enumerate(grid, 1):
        oy, ox = region[0].start, region[1].start
        if params is not None:
            inside = _within(x, y, core)
            # A source off the frame belongs to the nearest tile (it is flagged there).
            inside |= _nearest_tile(x, y, core, shape) & ~_within(x, y, frame)
            if not inside.any():
                continue
            # The sources in the margin come too, as the neighbours they are on the whole
            # frame (blends, the PSF fit's joint fluxes, groups), and are dropped after.
            rows = np.flatnonzero(inside | _within(x, y, region))
            own = inside[rows]
            tile_params = params[rows]
            tile_params["x_init"] = tile_params["x_init"] - ox
            tile_params["y_init"] = tile_params["y_init"] - oy
        else:
            tile_params = None
        tile_data = _read(data, region)
        if unit is not None:
            tile_data = tile_data * unit
        phot._frame_epsf = frame_epsf
        try:
            tbl = phot(tile_data, init_params=tile_params, mask=_read(mask, region),
                       error=_read(error, region), background=_read(background, region),
                       gain=gain, saturation=saturation,
                       wcs=None if wcs is None else wcs[region])
        finally:
            phot._frame_epsf = None
        for name in _POSITION_COLUMNS:
            if name in tbl.colnames:
                tbl[name] = tbl[name] + (ox if name.startswith("x") else oy)
        if params is None:
            # The finder's sources: each kept by the tile whose core holds it.
            tbl = tbl[_within(np.asarray(tbl["x_init"]), np.asarray(tbl["y_init"]), core)]
        else:
            tbl = tbl[own]
            tbl["_order"] = order_key[rows[own]]
        if "group_id" in tbl.colnames and len(tbl):
            tbl["group_id"] = np.asarray(tbl["group_id"]) + group_offset
            group_offset = int(np.max(tbl["group_id"]))
        tile_meta.append({"origin": [int(oy), int(ox)],
                          "shape": [region[0].stop - oy, region[1].stop - ox],
                          "core": [[core[0].start, core[0].stop], [core[1].start, core[1].stop]],
                          "n_sources": len(tbl),
                          **{k: v for k, v in tbl.meta.items() if _per_tile(k)}})
        tables.append(tbl)
        if progress is not None:
            progress(done, len(grid))
    if not tables:
        msg = "no sources in any tile"
        raise ValueError(msg)
    meta = {k: v for k, v in tables[0].meta.items() if not _per_tile(k)}
    result = QTable(vstack(tables, metadata_conflicts="silent"))
    if params is not None:
        result = result[np.argsort(np.asarray(result["_order"]), kind="stable")]
        result.remove_column("_order")
    else:
        result["id"] = np.arange(1, len(result) + 1)
    result.meta = {**meta, "tiles": tile_meta, "tile": tile, "tile_margin": margin}
    if isinstance(phot.psf_model, str):
        result.meta["tile_epsf"] = ("one for the frame, from its central region"
                                    if frame_epsf is not None else "per tile")
    return result


def _positions_only(params, x, y, ids):
    """The input table with its positions as ``x_init, y_init`` and its ids as ``id``."""
    from asidfe_phot._validation import X_ALIASES, Y_ALIASES

    table = QTable(params, copy=True)
    for name in (*X_ALIASES, *Y_ALIASES, "sky_centroid"):
        if name in table.colnames:
            table.remove_column(name)
    table["x_init"], table["y_init"] = x, y
    table["id"] = ids
    return table


def _within(x, y, box):
    """Positions whose pixel lies in ``box`` (row and column slices); NaN: none."""
    with np.errstate(invalid="ignore"):
        return ((x >= box[1].start - 0.5) & (x < box[1].stop - 0.5)
                & (y >= box[0].start - 0.5) & (y < box[0].stop - 0.5))


def _nearest_tile(x, y, core, shape):
    """Sources whose position, clipped to the frame (NaN: its first pixel), is in ``core``."""
    ny, nx = shape
    cx = np.clip(np.nan_to_num(x, nan=0.0), 0, nx - 1)
    cy = np.clip(np.nan_to_num(y, nan=0.0), 0, ny - 1)
    return _within(cx, cy, core)


def _per_tile(key):
    return key == "gain" or key.startswith(("psf_", "aperture_correction", "background"))
