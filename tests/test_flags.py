"""Tests of the bit flags registry `asidfe_phot.flags`."""

import numpy as np
import pytest
from astropy.table import Table

import asidfe_phot
from asidfe_phot import flags as F

# The documented, never-renumbered bits.
DOCUMENTED = {"EDGE": 1, "MASKED": 2, "CORE_MASKED": 4, "NO_OVERLAP": 8, "LARGE_SHIFT": 16,
              "OUTSIDE_TRAINING": 32, "NONPOSITIVE_FLUX": 64, "SATURATED": 128,
              "NO_SOURCE_NOISE": 256, "COMPACT": 512, "PSF_MISMATCH": 1024, "BLENDED": 2048,
              "NO_POSITION": 4096}


def test_bits_are_distinct_powers_of_two():
    bits = [bit for bit, _, _ in F.FLAG_DEFINITIONS]
    assert len(set(bits)) == len(bits)
    for bit in bits:
        assert bit > 0
        assert bit & (bit - 1) == 0, bit
    names = [name for _, name, _ in F.FLAG_DEFINITIONS]
    assert len(set(names)) == len(names)


def test_module_constants_match_registry():
    for bit, name, description in F.FLAG_DEFINITIONS:
        assert getattr(F, name) == bit
        assert name in F.__all__
        assert description
    assert {name: bit for bit, name, _ in F.FLAG_DEFINITIONS} == DOCUMENTED


def test_decode_int():
    assert F.decode_flags(0) == []
    assert F.decode_flags(F.EDGE) == ["EDGE"]
    assert F.decode_flags(F.EDGE | F.SATURATED | F.NO_SOURCE_NOISE) == [
        "EDGE", "SATURATED", "NO_SOURCE_NOISE"]
    assert F.decode_flags(np.int32(F.MASKED | F.CORE_MASKED)) == ["MASKED", "CORE_MASKED"]
    assert F.decode_flags(sum(DOCUMENTED.values())) == list(DOCUMENTED)
    # Unknown high bits are ignored rather than mis-named.
    assert F.decode_flags(2**20 | F.NO_OVERLAP) == ["NO_OVERLAP"]


def test_decode_array():
    flags = np.array([0, 1, 8 | 64, 256], dtype=np.int32)
    assert F.decode_flags(flags) == [[], ["EDGE"], ["NO_OVERLAP", "NONPOSITIVE_FLUX"],
                                     ["NO_SOURCE_NOISE"]]
    assert F.decode_flags(np.zeros(0, dtype=int)) == []
    assert asidfe_phot.decode_flags([2, 4]) == [["MASKED"], ["CORE_MASKED"]]


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_roundtrip_each_bit(name):
    assert F.decode_flags(getattr(F, name)) == [name]


def test_flag_table():
    tbl = F.flag_table()
    assert isinstance(tbl, Table)
    assert tbl.colnames == ["bit", "name", "description"]
    assert len(tbl) == len(F.FLAG_DEFINITIONS)
    assert list(tbl["bit"]) == list(DOCUMENTED.values())
    assert list(tbl["name"]) == list(DOCUMENTED)
    assert all(len(d) > 10 for d in tbl["description"])


def test_descriptions_state_the_thresholds_the_code_uses():
    # One source for each number: the flagging code reads the same constants.
    import inspect

    from asidfe_phot import MLPhotometry, _aperture_correction, _blends, _psf_fit
    from asidfe_phot import _thresholds as T

    described = {name: description for _, name, description in F.FLAG_DEFINITIONS}
    assert f"default {T.DEFAULT_MAX_SHIFT:g} px" in described["LARGE_SHIFT"]
    assert (inspect.signature(MLPhotometry).parameters["max_shift"].default
            == T.DEFAULT_MAX_SHIFT)
    assert (f"below {T.SNR_RANGE[0]:g} or above {T.SNR_RANGE[1]:g}"
            in described["OUTSIDE_TRAINING"])
    assert f"within {T.CORE_RADIUS} px" in described["CORE_MASKED"]
    assert f"within {T.CORE_RADIUS} px" in described["BLENDED"]
    assert _blends.CORE_RADIUS == T.CORE_RADIUS
    assert f"within {T.SATURATION_RADIUS} px" in described["SATURATED"]
    assert f"{100 * T.COMPACT_PEAK_FRACTION:g} %" in described["COMPACT"]
    assert f"S/N > {T.COMPACT_MIN_SNR:g}" in described["COMPACT"]
    low, high = T.APERTURE_FACTOR_RANGE
    assert f"over {high:g}x (or under {low:g}x)" in described["PSF_MISMATCH"]
    assert _aperture_correction.FACTOR_RANGE is T.APERTURE_FACTOR_RANGE
    assert f"by more than {T.BLEND_INFLATION:g}" in described["BLENDED"]
    assert _psf_fit.BLEND_INFLATION == T.BLEND_INFLATION
    assert f"{T.UNEXPLAINED_ERROR_PER_EPS:g}x the core" in described["BLENDED"]
    assert f"{T.LOW_BAD_SIGMA:g} sigma below" in described["MASKED"]


def test_flags_import_without_onnxruntime():
    import subprocess
    import sys

    code = ("import sys; import asidfe_phot.flags as f; f.flag_table(); "
            "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
