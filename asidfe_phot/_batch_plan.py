"""
Planning a batch (`asidfe_phot.batch`), on the client before any work: each frame's output
name, catalogue, single-image command line and the hashes of the model and PSF file, with
every argument checked (`_plan`).
"""

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from asidfe_phot import cli as _cli
from asidfe_phot._cli_inputs import CLIError as _CLIError

#: Stem of the combined table (``asidfe_batch.fits``) and of its manifest.
COMBINED_NAME = "asidfe_batch"
#: The single-image command's options a batch passes on to every frame (`measure_many`'s
#: ``options``), by their Python names; ``asidfe-phot --help`` describes them.
OPTIONS = ("hdu", "fwhm", "threshold", "gain", "saturation", "aperture_correction", "psf",
           "model", "batch_size", "providers", "precision", "tile")

class _BatchInputError(_CLIError, ValueError):
    """Bad arguments, found before any work (a ValueError; the command prints it)."""



@dataclass(frozen=True)
class _FrameSpec:
    """One frame's task, as sent to a worker (small and picklable)."""

    frame: str
    catalog: str | None
    key: str
    out_dir: str
    argv: tuple      # the options part of the single-image command line
    model_sha256: str
    psf_sha256: str | None = None     # of a --psf FILE (its path alone is in argv)

    @property
    def table(self):
        return os.path.join(self.out_dir, f"{self.key}.ecsv")

    @property
    def manifest(self):
        return os.path.join(self.out_dir, f"{self.key}.json")

    def command(self, output):
        """The single-image command line of this frame, writing to ``output``."""
        where = ["--find"] if self.catalog is None else ["--catalog", self.catalog]
        return [self.frame, *where, *self.argv, "--output", output, "--overwrite",
                "--no-progress", "--rows", "0"]


def _frame_stem(frame):
    """The file name without its FITS suffix: ``field.r`` for ``dir/field.r.fits.fz``."""
    name = Path(frame).name
    for suffix in sorted(_cli._IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return name


def _path_digest(frame):
    return hashlib.sha256(str(Path(frame).resolve()).encode()).hexdigest()[:8]


def _keys(frames):
    """Output names: the stem, or ``<stem>-<8 hex of the absolute path's sha256>`` on a clash."""
    stems = [_frame_stem(f) for f in frames]
    count = {}
    for stem in stems:
        count[stem.casefold()] = count.get(stem.casefold(), 0) + 1
    keys = [stem if count[stem.casefold()] == 1 and stem.casefold() != COMBINED_NAME
            else f"{stem}-{_path_digest(frame)}" for frame, stem in zip(frames, stems)]
    if len({k.casefold() for k in keys}) != len(keys):
        msg = "frames whose output names still clash after disambiguation; rename a frame"
        raise _BatchInputError(msg)
    return keys


def _catalog_list(frames, catalogs, find):
    if find == (catalogs is not None):
        msg = "give either catalogs (a pattern or one catalogue per frame) or find=True"
        raise _BatchInputError(msg)
    if find:
        return [None] * len(frames)
    if isinstance(catalogs, (str, os.PathLike)):
        pattern = str(catalogs)
        try:
            return [pattern.format(stem=_frame_stem(f), name=Path(f).name,
                                   parent=str(Path(f).parent)) for f in frames]
        except (KeyError, IndexError, ValueError) as exc:
            msg = (f"catalogue pattern {pattern!r}: use the fields {{stem}}, {{name}} and "
                   f"{{parent}} of each frame ({type(exc).__name__}: {exc})")
            raise _BatchInputError(msg) from exc
    catalogs = [str(c) for c in catalogs]
    if len(catalogs) != len(frames):
        msg = f"{len(catalogs)} catalogues for {len(frames)} frames; give one per frame"
        raise _BatchInputError(msg)
    return catalogs


def _option_text(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _options_argv(options):
    """The options as single-image command-line arguments, in a fixed order."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        msg = f"unknown option(s) {unknown}; the options are {list(OPTIONS)}"
        raise _BatchInputError(msg)
    argv = []
    for name in OPTIONS:
        if options.get(name) is not None:
            argv += [f"--{name.replace('_', '-')}", _option_text(options[name])]
    return [*argv, "--threads", "1"]


def _parse(argv):
    """The single-image command's arguments; a usage error becomes a CLIError."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return _cli._build_parser().parse_args(argv)
    except SystemExit as exc:
        lines = stderr.getvalue().strip().splitlines()
        msg = lines[-1] if lines else f"invalid options {argv}"
        raise _BatchInputError(msg) from exc


def _model_sha256(model):
    from asidfe_phot.exceptions import ModelError
    from asidfe_phot.models import verify_model

    try:
        return verify_model(model)[1]["sha256"]
    except ModelError as exc:
        raise _BatchInputError(str(exc)) from exc


def _plan(frames, out_dir, catalogs, find, options):
    """The frames' tasks, checked before any work; creates ``out_dir``."""
    frames = [os.fspath(f) for f in frames]
    if not frames:
        msg = "no frames to measure"
        raise _BatchInputError(msg)
    seen = {}
    for frame in frames:
        resolved = Path(frame).resolve()
        if resolved in seen:
            msg = f"frame {frame} is given twice (also as {seen[resolved]})"
            raise _BatchInputError(msg)
        seen[resolved] = frame
    cats = _catalog_list(frames, catalogs, find)
    argv = _options_argv(options)
    where = ["--find"] if find else ["--catalog", cats[0]]
    args = _parse([frames[0], *where, *argv])
    for option in ("gain", "saturation"):   # as the command checks them, but before any work
        value = getattr(args, option)
        if value is not None and not 0 < value < float("inf"):
            msg = f"--{option} must be a positive number, got {value}"
            raise _BatchInputError(msg)
    model_sha256 = _model_sha256(args.model)
    psf_sha256 = None
    inputs = set(seen) | {Path(c).resolve() for c in cats if c is not None}
    if args.psf not in (None, "auto", "none"):
        from asidfe_phot.models import file_sha256

        if not os.path.isfile(args.psf):
            msg = f"PSF file not found: {args.psf}"
            raise _BatchInputError(msg)
        psf_sha256 = file_sha256(args.psf)
        inputs.add(Path(args.psf).resolve())
    out_dir = Path(out_dir).absolute()
    specs = [_FrameSpec(frame, cat, key, str(out_dir), tuple(argv), model_sha256, psf_sha256)
             for frame, cat, key in zip(frames, cats, _keys(frames))]
    outputs = [p for s in specs for p in (s.table, s.manifest)]
    outputs += [out_dir / f"{COMBINED_NAME}.fits", out_dir / f"{COMBINED_NAME}.json"]
    for path in outputs:
        if Path(path).resolve() in inputs:
            msg = f"output {path} would replace an input file; choose another output folder"
            raise _BatchInputError(msg)
    out_dir.mkdir(parents=True, exist_ok=True)
    return specs
