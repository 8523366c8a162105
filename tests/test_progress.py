"""The progress reports with an ETA shared by MLPhotometry, the CLI and the scripts."""

import io
import sys
import types

import pytest

from asidfe_phot import _progress
from asidfe_phot._progress import Progress, format_duration


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(name="clock")
def fixture_clock(monkeypatch):
    """A fake perf_counter: ``clock.now`` seconds."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: clock.now)
    return clock


def test_log_lines_at_each_tenth_with_an_eta(clock):
    stream = io.StringIO()
    with Progress(40, "MLPhotometry", unit="sources", stream=stream) as bar:
        for _ in range(40):
            clock.now += 0.5
            bar.update()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 10
    assert lines[0] == "MLPhotometry: 4/40 sources (10%), 2.0 s elapsed, ETA 18 s"
    assert lines[-1] == "MLPhotometry: 40/40 sources (100%), done in 20 s"


def test_terminal_line_is_redrawn_in_place(clock, monkeypatch):
    monkeypatch.setattr(_progress, "_tqdm_class", lambda: None)
    stream = _Terminal()
    with Progress(3, "train", stream=stream) as bar:
        for _ in range(3):
            clock.now += 1.0
            bar.update(note="loss 0.5")
    text = stream.getvalue()
    assert text.startswith("\rtrain: 1/3 (33%), 1.0 s elapsed, ETA 2.0 s, loss 0.5")
    # The shorter last line blanks what the longer one before it left.
    assert text.endswith("\rtrain: 3/3 (100%), done in 3.0 s, loss 0.5" + " " * 10 + "\n")
    assert text.count("\n") == 1


def test_tqdm_drives_the_terminal_when_installed(monkeypatch):
    calls = []

    class FakeTqdm:
        def __init__(self, **kw):
            calls.append(("init", kw["total"], kw["initial"], kw["desc"]))

        def update(self, n):
            calls.append(("update", n))

        def set_postfix_str(self, note, refresh):
            calls.append(("note", note))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeTqdm))
    with Progress(5, "simulate", unit="frames", stream=_Terminal(), initial=2) as bar:
        bar.update(3, note="900 stamps/s")
    assert calls == [("init", 5, 2, "simulate"), ("note", "900 stamps/s"), ("update", 3),
                     ("close",)]
    # Not on a terminal (a log file): no tqdm, whole lines.
    calls.clear()
    stream = io.StringIO()
    with Progress(5, "simulate", stream=stream) as bar:
        bar.update(5)
    assert not calls and stream.getvalue().startswith("simulate: 5/5 (100%)")


def test_resumed_run_counts_its_own_rate(clock):
    lines = []
    bar = Progress(100, "step2", unit="steps", log=lines.append, initial=50)
    clock.now = 10.0
    bar.update(10)          # 10 steps in 10 s; 40 to go
    assert lines == ["step2: 60/100 steps (60%), 10 s elapsed, ETA 40 s"]


def test_disabled_is_silent():
    stream = _Terminal()
    with Progress(10, "x", stream=stream, enabled=False) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


@pytest.mark.parametrize(("seconds", "text"), [
    (0.42, "0.4 s"), (42.4, "42 s"), (185, "3 min 05 s"), (7620, "2 h 07 min"),
    (float("nan"), "?"), (float("inf"), "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
