"""Tests of asidfe_phot.consistency (ConTEST): size, power, determinism, input checks."""

import numpy as np
import pytest

from asidfe_phot.consistency import ContestResult, contest


def _pair(rng, n, scale_a=1.0, scale_b=1.0, bias=0.0, claimed=1.0):
    """Two noisy measurements of the same truths; errors claimed as ``claimed`` x the true ones."""
    truth = rng.uniform(10.0, 100.0, n)
    err_a = rng.uniform(0.5, 2.0, n) * scale_a
    err_b = rng.uniform(0.5, 2.0, n) * scale_b
    a = truth + rng.normal(0.0, err_a) + bias * np.hypot(err_a, err_b)
    b = truth + rng.normal(0.0, err_b)
    return a, b, claimed * err_a, claimed * err_b


def test_consistent_pairs_rejected_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    rejected = [contest(*_pair(rng, 50), n_sim=1000, seed=k).rejected for k in range(200)]
    # Binomial(200, 0.05): mean 10, sd 3.1.
    assert 3 <= sum(rejected) <= 19


def test_pvalues_of_consistent_pairs_are_uniform():
    rng = np.random.default_rng(2)
    p = np.array([contest(*_pair(rng, 30), n_sim=500, seed=k).exact_pvalue for k in range(300)])
    assert 0.4 < np.mean(p) < 0.6
    assert 0.05 < np.mean(p < 0.2) < 0.35


@pytest.mark.parametrize(("kwargs", "what"), [
    ({"bias": 1.0}, "offset of 1 combined sigma"),
    ({"claimed": 0.5}, "errors underestimated 2x"),
    ({"claimed": 3.0}, "errors overestimated 3x (two-sided test)"),
])
def test_inconsistent_pairs_are_rejected(kwargs, what):
    rng = np.random.default_rng(3)
    for k in range(5):
        res = contest(*_pair(rng, 100, **kwargs), n_sim=2000, seed=k)
        assert res.rejected, what
        assert res.pvalue < 0.01


def test_one_sided_alternative_ignores_overestimated_errors():
    rng = np.random.default_rng(4)
    a, b, ea, eb = _pair(rng, 100, claimed=3.0)
    assert contest(a, b, ea, eb, n_sim=2000).rejected
    res = contest(a, b, ea, eb, n_sim=2000, alternative="greater")
    assert not res.rejected and res.pvalue > 0.99


def test_statistic_pvalue_and_determinism():
    rng = np.random.default_rng(5)
    a, b, ea, eb = _pair(rng, 40)
    res = contest(a, b, ea, eb, n_sim=4000, seed=7)
    assert isinstance(res, ContestResult)
    expected = np.sqrt(np.mean(((a - b) / np.hypot(ea, eb)) ** 2))
    assert res.statistic == pytest.approx(expected)
    assert res.n == 40 and res.n_sim == 4000 and res.simulated.shape == (4000,)
    assert abs(res.pvalue - res.exact_pvalue) < 0.05
    again = contest(a, b, ea, eb, n_sim=4000, seed=7)
    assert again.pvalue == res.pvalue
    np.testing.assert_array_equal(again.simulated, res.simulated)
    assert res.verdict in ("Rejected", "Not rejected")


def test_reference_error_is_optional_and_adds_in_quadrature():
    rng = np.random.default_rng(6)
    a, b, ea, eb = _pair(rng, 60)
    combined = contest(a, b, np.hypot(ea, eb), n_sim=100)
    split = contest(a, b, ea, eb, n_sim=100)
    assert combined.statistic == pytest.approx(split.statistic)


def test_covariance_matrix_matches_diagonal_errors():
    rng = np.random.default_rng(7)
    a, b, ea, eb = _pair(rng, 30)
    diag = contest(a, b, ea, eb, n_sim=3000, seed=3)
    full = contest(a, b, np.diag(ea**2), np.diag(eb**2), n_sim=3000, seed=3)
    mixed = contest(a, b, np.diag(ea**2), eb, n_sim=3000, seed=3)
    assert full.statistic == pytest.approx(diag.statistic)
    assert mixed.statistic == pytest.approx(diag.statistic)
    assert full.exact_pvalue == pytest.approx(diag.exact_pvalue)
    assert abs(full.pvalue - diag.pvalue) < 0.05


def test_correlated_errors_are_accounted_for():
    # A common offset shared by all rows: consistent only when the covariance says so.
    rng = np.random.default_rng(8)
    n = 50
    cov = 0.25 * np.eye(n) + 4.0 * np.ones((n, n))
    diff = rng.multivariate_normal(np.zeros(n), cov)
    b = np.zeros(n)
    assert not contest(diff, b, cov, n_sim=2000).rejected
    assert contest(diff, b, np.full(n, 0.5), n_sim=2000).rejected


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (([1.0, 2.0], [1.0], [1.0, 1.0]), {}, "same length"),
    (([1.0], [1.0], [1.0]), {}, "at least 2 rows"),
    (([1.0, np.nan], [1.0, 2.0], [1.0, 1.0]), {}, "must be finite"),
    (([1.0, 2.0], [1.0, 2.0], [1.0, np.nan]), {}, "error must be finite"),
    (([1.0, 2.0], [1.0, 2.0], [1.0, 1.0, 1.0]), {}, "one value per row"),
    (([1.0, 2.0], [1.0, 2.0], [0.0, 1.0]), {}, "must be positive"),
    (([1.0, 2.0], [1.0, 2.0], np.ones((2, 3))), {}, "covariance matrix"),
    (([1.0, 2.0], [1.0, 2.0], -np.eye(2)), {}, "positive definite"),
    (([[1.0, 2.0]], [1.0, 2.0], [1.0, 1.0]), {}, "1-D array"),
    (([1.0, 2.0], [1.0, 2.0], [1.0, 1.0]), {"n_sim": 0}, "n_sim"),
    (([1.0, 2.0], [1.0, 2.0], [1.0, 1.0]), {"significance": 1.5}, "significance"),
    (([1.0, 2.0], [1.0, 2.0], [1.0, 1.0]), {"alternative": "less"}, "alternative"),
])
def test_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        contest(*args, **kwargs)
