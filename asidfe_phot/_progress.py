"""
Progress reports with an estimated time to completion (private): shared by
`~asidfe_phot.MLPhotometry`, the ``asidfe-phot`` command and the training and
evaluation scripts, so that every long loop reports the same way.

On a terminal one line is updated in place (tqdm's bar when tqdm is installed, as
photutils does); in a log (stderr redirected to a file, or a ``log`` callable such as
the training scripts' ``log=print``) whole lines are written at each tenth, so no
carriage returns land in files.
"""

import sys
import time

__all__ = []  # private module

#: Seconds between redraws of the one-line terminal display (tqdm throttles alike).
_REDRAW_SECONDS = 0.2


def is_terminal(stream):
    """Whether ``stream`` is an interactive terminal (False for files, pipes, closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_duration(seconds):
    """A short human duration: ``0.4 s``, ``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _tqdm_class():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """
    Progress of a loop of ``total`` steps, with the elapsed time and an ETA.

    Parameters
    ----------
    total : int
        Number of steps.
    desc : str
        What is progressing; starts each line (``"MLPhotometry"``).
    unit : str, optional
        What a step is (``"sources"``), written after the counts.
    enabled : bool, optional
        ``False`` makes every method a no-op, so callers need no branches.
    stream : file-like, optional
        Where to write (default: ``sys.stderr`` at construction).
    log : callable, optional
        Write whole lines through ``log(line)`` instead (the scripts' ``log=print``).
    initial : int, optional
        Steps already done (a resumed run); the rate, hence the ETA, counts only the
        steps done by this run.
    every : float, optional
        Fraction of ``total`` between lines in a log (default a tenth).
    """

    def __init__(self, total, desc, *, unit="", enabled=True, stream=None, log=None,
                 initial=0, every=0.1):
        self.total = max(int(total), 0)
        self.desc, self.unit = desc, unit
        self.enabled = bool(enabled)
        self.done = self.initial = int(initial)
        self.every = float(every)
        self._log = log
        self._stream = sys.stderr if stream is None else stream
        self._start = time.perf_counter()
        self._last_step = self._step_of(self.done)
        self._last_draw = -float("inf")
        self._width = 0       # of the last terminal line, to blank what a shorter one leaves
        self._bar = None
        self._closed = False
        interactive = log is None and is_terminal(self._stream)
        self._mode = "log" if not interactive else "line"
        if self.enabled and interactive:
            tqdm = _tqdm_class()
            if tqdm is not None:
                self._mode = "tqdm"
                self._bar = tqdm(total=self.total, initial=self.done, desc=desc,
                                 unit=f" {unit}" if unit else "it", file=self._stream,
                                 dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _step_of(self, done):
        return int(done / max(self.total, 1) / self.every + 1e-9) if self.every > 0 else done

    def line(self, note=None):
        """The progress as one line of text (no newline)."""
        elapsed = time.perf_counter() - self._start
        unit = f" {self.unit}" if self.unit else ""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.desc}: {self.done}/{self.total}{unit} ({pct:.0f}%)"
        if self.done >= self.total:
            text += f", done in {format_duration(elapsed)}"
        else:
            rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            text += f", {format_duration(elapsed)} elapsed, ETA {format_duration(eta)}"
        return f"{text}, {note}" if note else text

    def update(self, n=1, *, note=None):
        """Add ``n`` finished steps; ``note`` is appended to the line (e.g. a rate)."""
        if not self.enabled or self._closed:
            return
        self.done = min(self.done + int(n), self.total) if self.total else self.done + int(n)
        if self._mode == "tqdm":
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(int(n))
        elif self._mode == "line":
            now = time.perf_counter()
            if now - self._last_draw >= _REDRAW_SECONDS or self.done >= self.total:
                self._last_draw = now
                text = self.line(note)
                print(f"\r{text}{' ' * max(self._width - len(text), 0)}", end="",
                      file=self._stream, flush=True)
                self._width = len(text)
        else:
            step = self._step_of(self.done)
            if step > self._last_step or self.done >= self.total:
                self._last_step = step
                self._write(self.line(note))
                if self.done >= self.total:
                    self._closed = True     # the final line is out: say nothing more

    def _write(self, text):
        if self._log is not None:
            self._log(text)
        else:
            print(text, file=self._stream, flush=True)

    def close(self):
        """End the display: the terminal line gets its newline (idempotent)."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._mode == "tqdm":
            self._bar.close()
        elif self._mode == "line" and self._width:
            print(file=self._stream, flush=True)
