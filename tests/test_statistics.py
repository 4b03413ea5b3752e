"""Tests for ketamine_outcomes.statistics.

Three layers: values derived by hand (arithmetic in the comments), agreement with
independent implementations (statsmodels, scipy) on random cohorts with ties, and a few
hypothesis properties.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.duration.survfunc import SurvfuncRight, survdiff
from statsmodels.stats.proportion import proportion_confint

from ketamine_outcomes.statistics import (
    CI_METHODS,
    FISHER_MC_RESAMPLES,
    KaplanMeier,
    cumulative_response_band,
    kaplan_meier,
    kaplan_meier_from_counts,
    km_cumulative_response_at,
    km_median,
    km_median_ci,
    logrank_test,
    logrank_test_from_counts,
    proportion_ci,
    response_rate_test,
    type7_quantiles,
)

Z95 = 1.959963984540054  # qnorm(0.975)
TOL = 1e-6  # agreement tolerance required against the independent implementations


# --------------------------------------------------------------------------------------
# Kaplan-Meier by hand
# --------------------------------------------------------------------------------------

# Cohort A, 6 patients. Day 2 has two responses AND one censoring (the censored patient is
# still at risk on day 2); day 5 is a censoring-only day.
A_DAY = np.array([2, 2, 2, 4, 5, 7])
A_EVENT = np.array([True, True, False, True, False, True])


def test_km_hand_values_with_tied_events_and_censoring() -> None:
    km = kaplan_meier(A_DAY, A_EVENT)
    # day 2: n = 6 (censored patient counted at risk), d = 2, c = 1
    #        S = 1 - 2/6 = 2/3;  Greenwood V = 2 / (6 * 4) = 1/12
    # day 4: n = 6 - 3 = 3, d = 1     S = 2/3 * (1 - 1/3) = 4/9;  V = 1/12 + 1/(3*2) = 1/4
    # day 5: n = 2, d = 0, c = 1      S = 4/9 unchanged, V unchanged
    # day 7: n = 1, d = 1             S = 0 (V infinite -> CI undefined -> NaN)
    np.testing.assert_array_equal(km.day, [2, 4, 5, 7])
    np.testing.assert_array_equal(km.n_at_risk, [6, 3, 2, 1])
    np.testing.assert_array_equal(km.n_events, [2, 1, 0, 1])
    np.testing.assert_array_equal(km.n_censored, [1, 0, 1, 0])
    np.testing.assert_allclose(km.survival, [2 / 3, 4 / 9, 4 / 9, 0.0], rtol=0, atol=1e-15)
    # log-log CI: theta = log(-log S), se(theta) = sqrt(V) / |log S|,
    #   low = S ** exp(z se), high = S ** exp(-z se), z = 1.959964
    # day 2: log S = log(2/3) = -0.405465; sqrt(V) = 0.288675; se = 0.711960; z se = 1.395417
    #        low  = (2/3) ** exp( 1.395417) = (2/3) ** 4.036657 = 0.194617
    #        high = (2/3) ** exp(-1.395417) = (2/3) ** 0.247730 = 0.904434
    # day 4: log S = log(4/9) = -0.810930; sqrt(V) = 0.5; se = 0.616576; z se = 1.208466
    #        low  = (4/9) ** 3.348346 = 0.066187;  high = (4/9) ** 0.298655 = 0.784908
    expected_low = [0.19461663680623484, 0.0661867531464124, 0.0661867531464124, np.nan]
    expected_high = [0.9044341643225163, 0.7849083671479585, 0.7849083671479585, np.nan]
    np.testing.assert_allclose(km.ci_low, expected_low, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(km.ci_high, expected_high, rtol=1e-12, equal_nan=True)
    # the hand arithmetic itself, from the formula
    for s, v, lo, hi in [(2 / 3, 1 / 12, 0.194617, 0.904434), (4 / 9, 1 / 4, 0.066187, 0.784908)]:
        se = math.sqrt(v) / abs(math.log(s))
        assert s ** math.exp(Z95 * se) == pytest.approx(lo, abs=1e-6)
        assert s ** math.exp(-Z95 * se) == pytest.approx(hi, abs=1e-6)
    # median: first S < 0.5 is 4/9 on day 4. CI: lower band < 0.5 first on day 2; the upper
    # band (0.904, 0.785, 0.785, NaN at S = 0) never falls below 0.5 -> upper limit None.
    assert km_median(km) == 4.0
    assert km_median_ci(km) == (2.0, None)
    assert km.n_patients == 6
    assert km.max_followup_day == 7


def test_km_arrays_are_read_only() -> None:
    km = kaplan_meier(A_DAY, A_EVENT)
    assert isinstance(km, KaplanMeier)
    with pytest.raises(ValueError):
        km.survival[0] = 0.5


def test_cumulative_response_band_flips_the_survival_band() -> None:
    km = kaplan_meier(A_DAY, A_EVENT)
    cum, low, high = cumulative_response_band(km)
    # 1 - S = 1/3, 5/9, 5/9, 1; low = 1 - S_upper, high = 1 - S_lower
    np.testing.assert_allclose(cum, [1 / 3, 5 / 9, 5 / 9, 1.0], atol=1e-15)
    np.testing.assert_allclose(low[:3], 1 - np.array([0.904434, 0.784908, 0.784908]), atol=1e-6)
    np.testing.assert_allclose(high[:3], 1 - np.array([0.194617, 0.066187, 0.066187]), atol=1e-6)
    assert np.isnan(low[3]) and np.isnan(high[3])
    assert np.all(low[:3] <= cum[:3]) and np.all(cum[:3] <= high[:3])


def test_km_landmarks_right_continuous_and_none_after_last_followup() -> None:
    km = kaplan_meier(A_DAY, A_EVENT)
    # day 1: before any step -> 0; day 2 includes the day-2 step -> 1/3; day 3 -> 1/3;
    # day 4 -> 1 - 4/9 = 5/9; day 7 = last follow-up -> 1; days 8 and 28 are after it -> None
    got = km_cumulative_response_at(km, [1, 2, 3, 4, 7, 8, 28])
    expected = [0.0, 1 / 3, 1 / 3, 5 / 9, 1.0, None, None]
    for g, e in zip(got, expected, strict=True):
        if e is None:
            assert g is None
        else:
            assert g == pytest.approx(e, abs=1e-15)
    # spec landmarks for a cohort followed up to day 20 only
    km2 = kaplan_meier(np.array([3, 10, 20]), np.array([True, False, False]))
    got = km_cumulative_response_at(km2, (1, 7, 14, 28, 84))
    assert got[:3] == [0.0, pytest.approx(1 / 3), pytest.approx(1 / 3)]
    assert got[3:] == [None, None]


def test_median_on_flat_stretch_at_one_half_is_midpoint() -> None:
    # 4 patients: responses on days 2 and 4, censored on day 6, response on day 9.
    # S: day 2 -> 3/4; day 4 -> 3/4 * (1 - 1/3) = 1/2 exactly; day 6 (censor) -> 1/2;
    # day 9 -> 0.  Flat at 0.5 on [4, 9) -> median (4 + 9) / 2 = 6.5 (R/SAS rule).
    km = kaplan_meier(np.array([2, 4, 6, 9]), np.array([True, True, False, True]))
    np.testing.assert_allclose(km.survival, [0.75, 0.5, 0.5, 0.0], atol=1e-15)
    assert km_median(km) == 6.5
    # 6 patients, 3 respond on day 3 (S = 1 - 3/6 = 0.5), 1 censored day 5, then responses
    # on days 8 and 10: flat [3, 8) -> 5.5
    km = kaplan_meier(
        np.array([3, 3, 3, 5, 8, 10]), np.array([True, True, True, False, True, True])
    )
    assert km.survival[0] == 0.5
    assert km_median(km) == 5.5


def test_median_staying_at_one_half_to_last_followup_is_none() -> None:
    # responses on days 2 and 4, then censored on 6 and 9: S = 1/2 until the end -> None
    # (the spec's rule; recent R quantile.survfit would report (4 + 9) / 2 here).
    km = kaplan_meier(np.array([2, 4, 6, 9]), np.array([True, True, False, False]))
    assert km.survival[-1] == pytest.approx(0.5, abs=1e-15)
    assert km_median(km) is None


def test_median_not_reached() -> None:
    # 10 patients, responses on days 3 and 5 only: S = 9/10 * 8/9 = 0.8 at the end
    day = np.array([3, 5, 6, 7, 7, 10, 12, 14, 14, 20])
    event = np.zeros(10, bool)
    event[:2] = True
    km = kaplan_meier(day, event)
    assert km.survival[-1] == pytest.approx(0.8)
    assert km_median(km) is None
    low, high = km_median_ci(km)
    assert high is None
    # lower band already below 0.5 on day 3 (S = 0.9): V = 1/(10 * 9) = 1/90,
    #   se = sqrt(1/90) / |log 0.9| = 0.105409 / 0.105361 = 1.000463, z se = 1.960871
    #   low = 0.9 ** exp(1.960871) = 0.9 ** 7.105511 = 0.473009 < 0.5 -> lower limit day 3
    # day 5 (S = 0.8): V = 1/90 + 1/(9 * 8) = 0.025, se = 0.158114 / 0.223144 = 0.708575,
    #   low = 0.8 ** exp(1.388781) = 0.8 ** 4.009959 = 0.408691
    assert low == 3.0
    assert km.ci_low[0] == pytest.approx(0.473009, abs=1e-6)
    assert km.ci_low[1] == pytest.approx(0.408691, abs=1e-6)


def test_no_event_yet_has_undefined_band() -> None:
    # censoring on days 1 and 2 before the first response on day 5: S = 1 -> NaN bounds
    km = kaplan_meier(np.array([1, 2, 5, 6]), np.array([False, False, True, False]))
    assert np.all(np.isnan(km.ci_low[:2])) and np.all(np.isnan(km.ci_high[:2]))
    assert np.all(np.isfinite(km.ci_low[2:]))


def test_empty_cohort() -> None:
    km = kaplan_meier(np.array([], dtype=int), np.array([], dtype=bool))
    assert km.day.size == 0 and km.n_patients == 0 and km.max_followup_day is None
    assert km_median(km) is None
    assert km_median_ci(km) == (None, None)
    assert km_cumulative_response_at(km, [1, 7]) == [None, None]


def test_km_input_validation() -> None:
    with pytest.raises(ValueError):
        kaplan_meier(np.array([1, 2]), np.array([True]))
    with pytest.raises(ValueError):
        kaplan_meier(np.array([1, 2]), np.array([2, 0]))
    with pytest.raises(ValueError):
        kaplan_meier_from_counts(np.array([1, 2]), np.array([1, -1]), np.array([0, 0]))
    with pytest.raises(ValueError):
        kaplan_meier(np.array([1.0, np.nan]), np.array([True, False]))


def test_from_counts_sums_repeated_days_and_ignores_empty_days() -> None:
    a = kaplan_meier(A_DAY, A_EVENT)
    b = kaplan_meier_from_counts(
        np.array([7, 2, 4, 2, 5, 6]), np.array([1, 2, 1, 0, 0, 0]), np.array([0, 0, 0, 1, 1, 0])
    )
    _assert_km_equal(a, b)


# --------------------------------------------------------------------------------------
# quantiles
# --------------------------------------------------------------------------------------


def test_type7_quantiles() -> None:
    # R quantile(c(1, 2, 4, 7), type = 7): h = (n - 1) p + 1 -> p = .25: h = 1.75 -> 1 + .75 * 1
    # = 1.75; p = .5: h = 2.5 -> 2 + .5 * 2 = 3; p = .75: h = 3.25 -> 4 + .25 * 3 = 4.75
    assert type7_quantiles(np.array([7, 1, 4, 2])) == [1.75, 3.0, 4.75]
    assert type7_quantiles(np.array([5])) == [5.0, 5.0, 5.0]
    assert type7_quantiles(np.array([], dtype=int)) == [None, None, None]
    assert type7_quantiles(np.array([], dtype=int), probs=(0.5,)) == [None]


# --------------------------------------------------------------------------------------
# proportions by hand
# --------------------------------------------------------------------------------------


def test_wilson_known_values() -> None:
    z2 = Z95**2  # 3.841459
    # 8/20: centre = (8 + z^2/2) / (20 + z^2) = 9.920729 / 23.841459 = 0.416113
    #       half = z / (20 + z^2) * sqrt(8 * 12 / 20 + z^2 / 4) = 0.082208 * 2.400076 = 0.197306
    #       -> (0.218807, 0.613419); R prop.test(8, 20, correct = FALSE): 0.2188065 0.6134185
    low, high = proportion_ci(np.array([8]), np.array([20]))
    assert low[0] == pytest.approx(0.2188065, abs=1e-7)
    assert high[0] == pytest.approx(0.6134185, abs=1e-7)
    # k = 0 of 10: low is exactly 0, high = z^2 / (n + z^2) = 3.841459 / 13.841459 = 0.277533
    # k = n = 10: by symmetry (1 - 0.277533, 1) with high exactly 1
    low, high = proportion_ci(np.array([0, 10]), np.array([10, 10]), "wilson")
    assert low[0] == 0.0 and high[1] == 1.0
    assert high[0] == pytest.approx(z2 / (10 + z2), abs=1e-15)
    assert low[1] == pytest.approx(1 - z2 / (10 + z2), abs=1e-15)


def test_clopper_pearson_known_values() -> None:
    # 8/20: R binom.test(8, 20)$conf.int = 0.1911901 0.6394574
    low, high = proportion_ci(np.array([8]), np.array([20]), "clopper-pearson")
    assert low[0] == pytest.approx(0.1911901, abs=1e-7)
    assert high[0] == pytest.approx(0.6394574, abs=1e-7)
    # 0/10: low = 0, high solves (1 - p)^10 = 0.025 -> 1 - 0.025^(1/10) = 0.308497
    # 10/10: low solves p^10 = 0.025 -> 0.025^(1/10) = 0.691503, high = 1
    low, high = proportion_ci(np.array([0, 10]), np.array([10, 10]), "clopper-pearson")
    assert low[0] == 0.0 and high[1] == 1.0
    assert high[0] == pytest.approx(1 - 0.025**0.1, abs=1e-12)
    assert low[1] == pytest.approx(0.025**0.1, abs=1e-12)


@pytest.mark.parametrize("method", CI_METHODS)
def test_proportion_ci_zero_trials_shape_and_validation(method: str) -> None:
    low, high = proportion_ci(np.array([[0, 3], [0, 0]]), np.array([[0, 5], [2, 0]]), method)
    assert low.shape == high.shape == (2, 2)
    assert np.isnan(low[0, 0]) and np.isnan(high[0, 0]) and np.isnan(high[1, 1])
    assert np.all(np.isfinite(low[[0, 1], [1, 0]]))
    low, high = proportion_ci(3, 5, method)  # scalars work too
    assert 0 < float(low) < 0.6 < float(high) < 1
    with pytest.raises(ValueError):
        proportion_ci(np.array([6]), np.array([5]), method)
    with pytest.raises(ValueError):
        proportion_ci(np.array([1]), np.array([5]), method, confidence=1.0)
    with pytest.raises(ValueError):
        proportion_ci(np.array([1]), np.array([5]), "wald")


# --------------------------------------------------------------------------------------
# tests across groups by hand
# --------------------------------------------------------------------------------------


def test_chi2_hand_value() -> None:
    # responders 20/40 and 10/40 -> table [[20, 20], [10, 30]], N = 80, column totals 30, 50
    # expected = 40 * 30 / 80 = 15 and 40 * 50 / 80 = 25 in each row (all >= 5 -> chi2)
    # X2 = 2 * (5^2/15 + 5^2/25) = 2 * (5/3 + 1) = 16/3 = 5.3333; p = P(chi2_1 > 16/3) = 0.020921
    test, stat, df, p = response_rate_test(np.array([20, 10]), np.array([40, 40]))
    assert (test, df) == ("chi2", 1)
    assert stat == pytest.approx(16 / 3, rel=1e-12)
    assert p == pytest.approx(0.020921335337794, rel=1e-9)


def test_fisher_used_when_an_expected_count_is_below_5() -> None:
    # responders 1/10 and 5/10: column totals 6 and 14, expected responders 10 * 6 / 20 = 3 < 5
    # Hypergeometric P(x) = C(10, x) C(10, 6 - x) / C(20, 6), C(20, 6) = 38760:
    #   x = 0..6 -> 210, 2520, 9450, 14400, 9450, 2520, 210 (/ 38760); observed x = 1 (2520)
    #   two-sided p = (210 + 2520 + 2520 + 210) / 38760 = 5460 / 38760 = 0.140867
    test, stat, df, p = response_rate_test(np.array([1, 5]), np.array([10, 10]))
    assert (test, stat, df) == ("fisher", None, 1)
    assert p == pytest.approx(5460 / 38760, rel=1e-12)
    # a group with no patients is dropped before anything else
    assert response_rate_test(np.array([1, 0, 5]), np.array([10, 0, 10])) == (test, stat, df, p)


def test_expected_exactly_5_is_chi2() -> None:
    # rows 10 and 10, column totals 10 and 10: every expected count is exactly 5 -> chi2
    test, stat, df, p = response_rate_test(np.array([4, 6]), np.array([10, 10]))
    assert test == "chi2"
    # X2 = 4 * 1^2 / 5 = 0.8
    assert stat == pytest.approx(0.8)


def _exact_ffh_pvalue(responders: np.ndarray, totals: np.ndarray) -> float:
    """Exact Fisher-Freeman-Halton p-value of a k x 2 table by full enumeration."""
    total_r = int(responders.sum())
    log_denominator = math.log(math.comb(int(totals.sum()), total_r))

    def log_prob(r: tuple[int, ...]) -> float:
        return sum(math.log(math.comb(int(n), x)) for n, x in zip(totals, r, strict=True))

    observed = log_prob(tuple(int(x) for x in responders))
    p = 0.0
    for r in itertools.product(*(range(int(n) + 1) for n in totals)):
        if sum(r) == total_r:
            lp = log_prob(r)
            if lp <= observed + 1e-7:
                p += math.exp(lp - log_denominator)
    return p


def test_fisher_k3_monte_carlo_matches_exact_enumeration_and_is_seeded() -> None:
    responders, totals = np.array([1, 5, 3]), np.array([10, 10, 7])
    test, stat, df, p = response_rate_test(responders, totals)
    assert (test, stat, df) == ("fisher", None, 2)
    exact = _exact_ffh_pvalue(responders, totals)
    # Monte Carlo standard error sqrt(p (1 - p) / 99 999) ~ 0.0012; allow 5 SE
    assert abs(p - exact) < 5 * math.sqrt(exact * (1 - exact) / FISHER_MC_RESAMPLES)
    assert response_rate_test(responders, totals)[3] == p  # same default seed, same p
    assert response_rate_test(responders, totals, seed=1)[3] != p


def test_response_rate_degenerate_tables() -> None:
    # nobody responded: only one table has these margins
    assert response_rate_test(np.array([0, 0, 0]), np.array([10, 10, 7])) == (
        "fisher",
        None,
        2,
        1.0,
    )
    # fewer than two groups with patients: no test
    test, stat, df, p = response_rate_test(np.array([3, 0]), np.array([10, 0]))
    assert (test, stat, df) == ("none", None, 0) and math.isnan(p)
    with pytest.raises(ValueError):
        response_rate_test(np.array([3]), np.array([2]))


def test_logrank_hand_value() -> None:
    # A: response day 1, response day 3; B: response day 2, censored day 4
    # day 1: n = 4 (A 2), d = 1 in A: E_A = 2/4, V = d (n - d) / (n - 1) * pA (1 - pA)
    #        = 1 * 3 / 3 * 1/2 * 1/2 = 1/4
    # day 2: n = 3 (A 1), d = 1 in B: E_A = 1/3, V = 1 * 2 / 2 * 1/3 * 2/3 = 2/9
    # day 3: n = 2 (A 1), d = 1 in A: E_A = 1/2, V = 1 * 1 / 1 * 1/2 * 1/2 = 1/4
    # O_A - E_A = 2 - 4/3 = 2/3; V = 13/18; X2 = (4/9) / (13/18) = 8/13
    chisq, df, p = logrank_test(
        np.array([1, 3, 2, 4]), np.array([True, True, True, False]), np.array(["A", "A", "B", "B"])
    )
    assert df == 1
    assert chisq == pytest.approx(8 / 13, rel=1e-12)
    assert p == pytest.approx(stats.chi2.sf(8 / 13, 1), rel=1e-12)


def test_logrank_degenerate() -> None:
    chisq, df, p = logrank_test(np.array([1, 2]), np.array([True, False]), np.array([0, 0]))
    assert df == 0 and math.isnan(chisq) and math.isnan(p)
    # no events at all
    chisq, df, p = logrank_test(np.array([1, 2]), np.array([False, False]), np.array([0, 1]))
    assert df == 0 and math.isnan(p)
    # group 2 censored before any response: expected 0 -> dropped, df = 1 (R survdiff rule)
    day = np.array([1, 3, 2, 4, 5, 6])
    event = np.array([True, True, True, False, True, False])
    group = np.array([0, 0, 1, 1, 1, 1])
    base = logrank_test(day, event, group)
    with_censored_early = logrank_test(
        np.append(day, 0), np.append(event, False), np.append(group, 2)
    )
    assert with_censored_early[1] == 1
    assert with_censored_early[0] == pytest.approx(base[0])


# --------------------------------------------------------------------------------------
# agreement with independent implementations on random cohorts
# --------------------------------------------------------------------------------------

COHORT_SIZES = [20, 23, 37, 50, 120, 400, 1000, 2000]


def _cohort(seed: int, n: int, n_groups: int = 1) -> tuple[np.ndarray, ...]:
    """Random time-to-response cohort on integer days 1..84 (many ties)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_groups, n)
    hazard = rng.uniform(0.01, 0.12) * (1 + 0.4 * group)
    event_day = rng.geometric(np.minimum(hazard, 0.9))
    censor_day = np.where(rng.random(n) < 0.3, rng.integers(1, 85, n), 84)
    day = np.minimum(event_day, censor_day)
    event = event_day <= censor_day
    return day, event, group


def _assert_km_equal(a: KaplanMeier, b: KaplanMeier) -> None:
    for field in ("day", "n_at_risk", "n_events", "n_censored"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for field in ("survival", "ci_low", "ci_high"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-13, equal_nan=True)


def _counts(day: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    udays, inv = np.unique(day, return_inverse=True)
    return (
        udays,
        np.bincount(inv, weights=event, minlength=udays.size).astype(int),
        np.bincount(inv, weights=~event, minlength=udays.size).astype(int),
    )


def _assert_median_matches_statsmodels(km: KaplanMeier, sf: SurvfuncRight) -> None:
    """Median and Brookmeyer-Crowley CI equal statsmodels' except where it defines them
    differently.

    statsmodels ``quantile(0.5)`` is the first event time with S < 0.5 (no tolerance, no
    midpoint rule) and ``quantile_ci(0.5, method="cloglog")`` inverts the log-log z-test over
    event times (SAS's formulation), returning inf for an upper limit not reached. That
    equals R's band rule except in two documented cases:

    1. S is exactly 0.5 on a flat stretch [t1, t2): we (R, SAS) report (t1 + t2) / 2, while
       statsmodels returns t2 (or t1 when its exp(cumsum(log)) lands just below 0.5).
    2. S drops to 0 on the last day while the upper band never fell below 0.5: the band is
       undefined at S = 0, so R's quantile.survfit (and lifelines) report the upper limit as
       not reached (None); statsmodels returns that last day.
    """
    median = km_median(km)
    sm_median = sf.quantile(0.5)
    sm_median = None if np.isnan(sm_median) else float(sm_median)
    half = np.flatnonzero(np.abs(km.survival - 0.5) < 1e-12)
    if half.size:  # case 1
        t1 = float(km.day[half[0]])
        below = np.flatnonzero(km.survival < 0.5 - 1e-12)
        if below.size:
            t2 = float(km.day[below[0]])
            assert median == (t1 + t2) / 2
            assert sm_median in (t1, t2)
        else:
            assert median is None
            assert sm_median in (None, t1)
    else:
        assert median == sm_median
    lb, ub = sf.quantile_ci(0.5, alpha=0.05, method="cloglog")
    low, high = km_median_ci(km)
    assert low == (None if np.isnan(lb) else lb)
    if high is None and np.isfinite(ub):  # case 2
        assert km.survival[-1] == 0.0 and ub == km.day[-1]
    else:
        assert high == (None if not np.isfinite(ub) else ub)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("n", COHORT_SIZES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_km_agrees_with_statsmodels_and_scipy(n: int, seed: int) -> None:
    day, event, _ = _cohort(seed * 1000 + n, n)
    km = kaplan_meier(day, event)

    # --- statsmodels SurvfuncRight: S and Greenwood SE at event days ------------------
    sf = SurvfuncRight(day, event.astype(int))
    at_events = km.n_events > 0
    np.testing.assert_array_equal(km.day[at_events], sf.surv_times)
    np.testing.assert_allclose(km.survival[at_events], sf.surv_prob, rtol=0, atol=TOL / 1000)
    # statsmodels has no pointwise band; rebuild log-log from its S and SE(S):
    # se(log S) = SE / S, se(log(-log S)) = se(log S) / |log S|
    s = sf.surv_prob
    ok = (s > 0) & (s < 1)
    theta_se = sf.surv_prob_se[ok] / (s[ok] * np.abs(np.log(s[ok])))
    np.testing.assert_allclose(
        km.ci_low[at_events][ok], s[ok] ** np.exp(Z95 * theta_se), rtol=0, atol=TOL / 1000
    )
    np.testing.assert_allclose(
        km.ci_high[at_events][ok], s[ok] ** np.exp(-Z95 * theta_se), rtol=0, atol=TOL / 1000
    )
    assert np.all(np.isnan(km.ci_low[at_events][~ok]))

    # --- median and its CI -------------------------------------------------------------
    _assert_median_matches_statsmodels(km, sf)

    # --- scipy.stats.ecdf: S at every day and its log-log band ------------------------
    res = stats.ecdf(stats.CensoredData.right_censored(day, ~event))
    np.testing.assert_allclose(km.survival, res.sf.evaluate(km.day), rtol=0, atol=TOL / 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        band = res.sf.confidence_interval(0.95, method="log-log")
        sp_low, sp_high = band.low.evaluate(km.day), band.high.evaluate(km.day)
    np.testing.assert_allclose(km.ci_low, sp_low, rtol=0, atol=TOL / 1000, equal_nan=True)
    np.testing.assert_allclose(km.ci_high, sp_high, rtol=0, atol=TOL / 1000, equal_nan=True)

    # --- per-day counts give the same object -----------------------------------------
    _assert_km_equal(km, kaplan_meier_from_counts(*_counts(day, event)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_median_sweep_against_statsmodels_small_cohorts() -> None:
    """Many small cohorts, where flats at 0.5 and curves ending at 0 are common."""
    rng = np.random.default_rng(2026)
    for i in range(400):
        day, event, _ = _cohort(10_000 + i, int(rng.integers(5, 200)))
        km = kaplan_meier(day, event)
        _assert_median_matches_statsmodels(km, SurvfuncRight(day, event.astype(int)))


def test_km_confidence_level_is_used() -> None:
    day, event, _ = _cohort(7, 300)
    km90 = kaplan_meier(day, event, confidence=0.90)
    res = stats.ecdf(stats.CensoredData.right_censored(day, ~event))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        band = res.sf.confidence_interval(0.90, method="log-log")
        np.testing.assert_allclose(km90.ci_low, band.low.evaluate(km90.day), equal_nan=True)
        np.testing.assert_allclose(km90.ci_high, band.high.evaluate(km90.day), equal_nan=True)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("n", [20, 60, 300, 2000])
def test_logrank_agrees_with_statsmodels_survdiff(k: int, n: int) -> None:
    for seed in range(3):
        day, event, group = _cohort(100 * k + seed + n, n, n_groups=k)
        if np.unique(group).size < k:
            continue
        chisq, df, p = logrank_test(day, event, group)
        sm_chisq, sm_p = survdiff(day, event.astype(int), group)
        assert df == k - 1
        assert chisq == pytest.approx(sm_chisq, rel=TOL, abs=1e-9)
        assert p == pytest.approx(sm_p, rel=TOL, abs=1e-12)
        if k == 2:  # scipy's two-group log-rank: z^2 is the chi-square
            sp = stats.logrank(
                stats.CensoredData.right_censored(day[group == 0], ~event[group == 0]),
                stats.CensoredData.right_censored(day[group == 1], ~event[group == 1]),
            )
            assert chisq == pytest.approx(sp.statistic**2, rel=TOL)
            assert p == pytest.approx(sp.pvalue, rel=TOL)
        # from per-(group, day) counts, rows shuffled
        keys, inv = np.unique(np.column_stack([group, day]), axis=0, return_inverse=True)
        inv = inv.ravel()
        d = np.bincount(inv, weights=event).astype(int)
        c = np.bincount(inv, weights=~event).astype(int)
        order = np.random.default_rng(seed).permutation(len(keys))
        got = logrank_test_from_counts(keys[order, 1], keys[order, 0], d[order], c[order])
        assert got[1] == df
        assert got[0] == pytest.approx(chisq, rel=1e-12)
        assert got[2] == pytest.approx(p, rel=1e-12)


def test_proportions_agree_with_scipy_and_statsmodels() -> None:
    rng = np.random.default_rng(42)
    n = np.concatenate([np.arange(1, 40), rng.integers(40, 5000, 60)])
    k = np.concatenate([[0, 1], rng.integers(0, n[2:] + 1)])
    k[5], k[9] = n[5], 0  # extremes
    for method, sm_method, sp_method in [
        ("wilson", "wilson", "wilson"),
        ("clopper-pearson", "beta", "exact"),
    ]:
        low, high = proportion_ci(k, n, method)
        sm_low, sm_high = proportion_confint(k, n, alpha=0.05, method=sm_method)
        np.testing.assert_allclose(low, np.clip(sm_low, 0, 1), rtol=0, atol=TOL / 1000)
        np.testing.assert_allclose(high, np.clip(sm_high, 0, 1), rtol=0, atol=TOL / 1000)
        for ki, ni, lo, hi in zip(k, n, low, high, strict=True):
            ci = stats.binomtest(int(ki), int(ni)).proportion_ci(method=sp_method)
            assert lo == pytest.approx(ci.low, abs=TOL / 1000)
            assert hi == pytest.approx(ci.high, abs=TOL / 1000)
        assert np.all(low[k == 0] == 0.0) and np.all(high[k == n] == 1.0)


def test_chi2_agrees_with_scipy_and_switches_on_expected_counts() -> None:
    rng = np.random.default_rng(5)
    n_chi2 = n_fisher = 0
    for _ in range(40):
        k = int(rng.integers(2, 7))
        totals = rng.integers(1, 120, k)
        responders = rng.binomial(totals, rng.uniform(0.02, 0.6))
        table = np.column_stack([responders, totals - responders])
        test, stat, df, p = response_rate_test(responders, totals)
        assert df == k - 1
        if table.sum(axis=0).min() == 0:
            assert (test, p) == ("fisher", 1.0)
            continue
        res = stats.chi2_contingency(table, correction=False)
        if res.expected_freq.min() >= 5:
            n_chi2 += 1
            assert test == "chi2"
            assert stat == pytest.approx(res.statistic, rel=TOL)
            assert p == pytest.approx(res.pvalue, rel=TOL)
        else:
            n_fisher += 1
            assert test == "fisher" and stat is None and 0 < p <= 1
    assert n_chi2 > 5 and n_fisher > 5


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------

cohorts = st.lists(
    st.tuples(st.integers(min_value=1, max_value=30), st.booleans()), min_size=1, max_size=60
)


@settings(max_examples=150, deadline=None)
@given(cohorts)
def test_km_properties(rows: list[tuple[int, bool]]) -> None:
    day = np.array([r[0] for r in rows])
    event = np.array([r[1] for r in rows])
    km = kaplan_meier(day, event)
    s = km.survival
    assert np.all((s >= 0) & (s <= 1))
    assert np.all(np.diff(s) <= 0)
    assert km.n_at_risk[0] == len(rows)
    assert int(km.n_events.sum()) == int(event.sum())
    defined = (s > 0) & (s < 1)
    assert np.array_equal(np.isnan(km.ci_low), ~defined)
    assert np.all(km.ci_low[defined] <= s[defined] + 1e-12)
    assert np.all(s[defined] <= km.ci_high[defined] + 1e-12)
    assert np.all((km.ci_low[defined] >= 0) & (km.ci_high[defined] <= 1))
    median = km_median(km)
    low, high = km_median_ci(km)
    if median is not None:
        assert km.day[0] <= median <= km.day[-1]
        if low is not None:
            assert low <= median
        if high is not None:
            assert median <= high
    elif high is not None:
        pytest.fail("upper band crossed 0.5 although S did not")
    cum = [c for c in km_cumulative_response_at(km, range(0, 32)) if c is not None]
    assert np.all(np.diff(cum) >= -1e-15)
    _assert_km_equal(km, kaplan_meier_from_counts(*_counts(day, event)))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10_000), st.data())
def test_proportion_ci_contains_estimate(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=n))
    for method in CI_METHODS:
        low, high = proportion_ci(np.array([k]), np.array([n]), method)
        assert 0.0 <= low[0] <= k / n <= high[0] <= 1.0


def test_fisher_on_tiny_k_by_2_tables_returns_a_scalar_p_value() -> None:
    # scipy's Monte Carlo Fisher returns a shape-(1,) array for some tiny tables; with one
    # patient per group and margins (1 responder, 2 non-responders) every table is as likely
    # as the observed one, so the exact p is 1.
    test, statistic, df, p = response_rate_test(np.array([0, 1, 0]), np.array([1, 1, 1]))
    assert (test, statistic, df) == ("fisher", None, 2)
    assert isinstance(p, float) and p == 1.0
