"""
Write the offline intersphinx inventories in this folder: numpy, astropy, photutils, onnxruntime.

    python docs/_intersphinx/make_inventories.py        # from the repository root

The docs build has no network (nor has CI), so ``docs/conf.py`` points intersphinx at these
files instead of the projects' published ``objects.inv`` (``ASIDFE_DOCS_INTERSPHINX=1``
uses the published ones). None of the installed packages ships its inventory, so each is
made here from the *installed* package's public API and the URL scheme its own docs use:

* astropy, photutils: sphinx-automodapi, one page per public class or function of each
  documented module, ``api/<module>.<name>.html``, members on their class's page
  (photutils 3.0: ``docs/reference/*_api.rst``, ``automodapi_toctreedirnm`` left at its
  default; astropy: the ``Reference/API`` section of each subpackage's page, e.g.
  ``.. automodapi:: astropy.nddata``). astropy.io.fits is documented by hand instead:
  ``io/fits/api/{files,hdulists,headers,hdus}.html`` (its ``docs/io/fits/api/*.rst``).
* numpy: autosummary pages ``reference/generated/numpy.<name>.html`` for the top-level
  functions and ufuncs and the ``ndarray`` and ``dtype`` classes; ``numpy.ma.MaskedArray``
  and ``numpy.random.Generator`` / ``default_rng`` on their own pages.
* onnxruntime: one page, ``api_summary.html`` (``docs/python/api_summary.rst``: the
  classes and functions listed in ``ONNXRUNTIME`` below, each with its members).

Only objects whose page follows from these rules are listed: a missing object renders as
plain text, a wrong link would be a 404. Rerun after upgrading one of these packages.
"""

import importlib
import inspect
import zlib
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Modules documented with ``.. automodapi::`` at their own path.
ASTROPY_MODULES = ("astropy.table", "astropy.units", "astropy.nddata", "astropy.wcs",
                   "astropy.coordinates", "astropy.stats", "astropy.time",
                   "astropy.visualization", "astropy.modeling", "astropy.modeling.models",
                   "astropy.modeling.fitting", "astropy.convolution", "astropy.io.ascii",
                   "astropy.utils.exceptions", "astropy.utils.masked")
PHOTUTILS_MODULES = ("photutils.aperture", "photutils.background", "photutils.centroids",
                     "photutils.datasets", "photutils.detection", "photutils.geometry",
                     "photutils.isophote", "photutils.morphology", "photutils.profiles",
                     "photutils.psf", "photutils.psf_matching", "photutils.segmentation",
                     "photutils.utils")
#: astropy.io.fits: page of each object (docs/io/fits/api/*.rst).
ASTROPY_FITS_PAGES = {
    "files": ("open", "writeto", "info", "append", "update", "getdata", "getheader",
              "getval", "setval", "delval"),
    "hdulists": ("HDUList",),
    "headers": ("Header",),
    "hdus": ("PrimaryHDU", "GroupsHDU", "GroupData", "Group", "StreamingHDU"),
}
#: numpy objects documented off the autosummary pattern.
NUMPY_SPECIAL = {"numpy.ma.MaskedArray": "reference/maskedarray.baseclass.html",
                 "numpy.random.Generator": "reference/random/generator.html",
                 "numpy.random.default_rng": "reference/random/generator.html"}
#: Everything docs/python/api_summary.rst documents (inherited members for InferenceSession).
ONNXRUNTIME = ("InferenceSession", "RunOptions", "SessionOptions", "ExecutionMode",
               "ExecutionOrder", "GraphOptimizationLevel", "OrtAllocatorType", "OrtArenaCfg",
               "OrtMemoryInfo", "OrtMemType", "OrtValue", "SparseTensor", "IOBinding",
               "SessionIOBinding", "OrtDevice", "ModelMetadata", "NodeArg",
               "create_and_register_allocator", "create_and_register_allocator_v2",
               "disable_telemetry_events", "enable_telemetry_events", "get_all_providers",
               "get_available_providers", "get_build_info", "get_version_string",
               "has_collective_ops", "get_device", "set_default_logger_severity",
               "set_default_logger_verbosity", "set_seed")


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return [n for n in names if not n.startswith("_") and hasattr(module, n)]


def _role(obj):
    if inspect.isclass(obj):
        return "py:exception" if issubclass(obj, BaseException) else "py:class"
    return "py:function"


def _members(cls, inherited=False):
    """(name, role) of the documented public members of ``cls``, as autodoc lists them."""
    names = dir(cls) if inherited else list(vars(cls))
    out = []
    for name in sorted(set(names)):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name, None)
        if raw is None or not (getattr(raw, "__doc__", None) or "").strip():
            continue
        if isinstance(raw, property):
            out.append((name, "py:property"))
        elif isinstance(raw, (classmethod, staticmethod)) or callable(raw):
            if inspect.isclass(raw):
                continue
            out.append((name, "py:method"))
    return out


def _is_local(obj, package):
    return (getattr(obj, "__module__", None) or "").split(".")[0] == package


def automodapi_entries(modules, package):
    """Entries of sphinx-automodapi pages: ``api/<module>.<name>.html`` and members."""
    entries = {}
    for modname in modules:
        module = importlib.import_module(modname)
        for name in _public_names(module):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not _is_local(obj, package):
                continue
            full = f"{modname}.{name}"
            page = f"api/{full}.html"
            entries.setdefault(full, (_role(obj), f"{page}#$"))
            if inspect.isclass(obj):
                for member, role in _members(obj):
                    entries.setdefault(f"{full}.{member}", (role, f"{page}#$"))
    return entries


def astropy_fits_entries():
    from astropy.io import fits

    entries = {}
    for page, names in ASTROPY_FITS_PAGES.items():
        for name in names:
            obj = getattr(fits, name, None)
            if obj is None:
                continue
            full = f"astropy.io.fits.{name}"
            uri = f"io/fits/api/{page}.html#$"
            entries[full] = (_role(obj), uri)
            if inspect.isclass(obj):
                for member, role in _members(obj):
                    entries[f"{full}.{member}"] = (role, uri)
    return entries


def numpy_entries():
    import numpy as np

    entries = {}
    for name in _public_names(np):
        obj = getattr(np, name)
        if name in ("test",) or inspect.ismodule(obj) or inspect.isclass(obj):
            continue
        if callable(obj):
            entries[f"numpy.{name}"] = ("py:function",
                                        f"reference/generated/numpy.{name}.html#$")
    for name in ("ndarray", "dtype"):
        entries[f"numpy.{name}"] = ("py:class", f"reference/generated/numpy.{name}.html#$")
    for full, page in NUMPY_SPECIAL.items():
        module, _, name = full.rpartition(".")
        obj = getattr(importlib.import_module(module), name)
        entries[full] = (_role(obj), f"{page}#$")
    return entries


def onnxruntime_entries():
    import onnxruntime

    entries = {}
    for name in ONNXRUNTIME:
        obj = getattr(onnxruntime, name, None)
        if obj is None:
            continue
        full = f"onnxruntime.{name}"
        entries[full] = (_role(obj), "api_summary.html#$")
        if inspect.isclass(obj):
            for member, role in _members(obj, inherited=name == "InferenceSession"):
                entries[f"{full}.{member}"] = (role, "api_summary.html#$")
    return entries


def write_inventory(path, project, version, entries):
    """A Sphinx inventory, version 2 (the format of ``objects.inv``)."""
    header = ("# Sphinx inventory version 2\n"
              f"# Project: {project}\n"
              f"# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n")
    lines = []
    for name in sorted(entries):
        role, uri = entries[name]     # "#$": the anchor is the object's full name
        lines.append(f"{name} {role} 1 {uri} -\n")
    path.write_bytes(header.encode() + zlib.compress("".join(lines).encode()))
    return len(lines)


def main():
    made = {
        "numpy": ("NumPy", numpy_entries()),
        "astropy": ("Astropy", {**automodapi_entries(ASTROPY_MODULES, "astropy"),
                                **astropy_fits_entries()}),
        "photutils": ("Photutils", automodapi_entries(PHOTUTILS_MODULES, "photutils")),
        "onnxruntime": ("ONNX Runtime", onnxruntime_entries()),
    }
    for key, (project, entries) in made.items():
        version = metadata.version(key)
        n = write_inventory(HERE / f"{key}.inv", project, version, entries)
        print(f"{key}.inv: {n} objects ({project} {version})")


if __name__ == "__main__":
    main()
