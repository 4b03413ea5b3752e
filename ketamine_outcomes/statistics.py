"""Summary statistics for the outcome marts (pure numpy/scipy).

Everything here implements the "Summaries" section of ``specs/outcomes.md`` so
that each published number can be reproduced in R, SAS, lifelines or
statsmodels. All functions are vectorised with numpy: per-patient data never
goes through a Python loop, and the ``*_from_counts`` variants take the
per-day aggregates a SQL ``GROUP BY`` produces.

Methods and sources
-------------------
* Binomial proportions: Wilson score interval without continuity correction
  (Wilson, E. B. 1927, "Probable inference, the law of succession, and
  statistical inference", JASA 22:209-212; R ``prop.test(k, n, correct =
  FALSE)``, scipy ``binomtest(k, n).proportion_ci(method="wilson")``,
  statsmodels ``proportion_confint(method="wilson")``) and the Clopper-Pearson
  exact interval (Clopper, C. J. & Pearson, E. S. 1934, "The use of confidence
  or fiducial limits illustrated in the case of the binomial", Biometrika
  26:404-413; R ``binom.test``, scipy ``method="exact"``, statsmodels
  ``method="beta"``).
* Kaplan-Meier product-limit estimator (Kaplan, E. L. & Meier, P. 1958, JASA
  53:457-481) with Greenwood's variance (Greenwood, M. 1926, "The natural
  duration of cancer", Reports on Public Health and Medical Subjects 33):
  ``Var(log S(t)) = sum_{t_i <= t} d_i / (n_i (n_i - d_i))``.
* Pointwise confidence band on the log-log scale (Kalbfleisch, J. D. &
  Prentice, R. L. 1980/2002, "The Statistical Analysis of Failure Time Data";
  R ``survfit(conf.type = "log-log")``, SAS ``CONFTYPE=LOGLOG``, lifelines,
  scipy ``ecdf(...).sf.confidence_interval(method="log-log")``):
  ``S(t) ** exp(+/- z * se / log S(t))`` with ``se = sqrt(Var(log S))``.
  Where the transform is undefined (S = 1 before the first event, S = 0 after
  the last patient responded) both bounds are NaN, as in R's
  ``survfit_confint`` (lifelines fills those points with 1.0 instead).
* Median time to response: the smallest t with S(t) < 0.5; when S(t) is
  exactly 0.5 on a flat stretch [t1, t2) the midpoint (t1 + t2) / 2 (R
  ``quantile.survfit``, SAS). Not reached (None) when S never falls below 0.5
  or stays at 0.5 to the last follow-up (the spec's rule; recent versions of
  R's ``quantile.survfit`` instead use the midpoint of t1 and the last
  follow-up time in that case).
* Median confidence interval (Brookmeyer, R. & Crowley, J. 1982, "A confidence
  interval for the median survival time", Biometrics 38:29-41), computed as R
  ``quantile.survfit`` does: the median rule applied to the lower pointwise
  band of S gives the lower limit (the lower band crosses 0.5 first), applied
  to the upper band the upper limit. Points where the band is NaN are skipped,
  as R's ``approx`` does.
* k-group log-rank test (Mantel, N. 1966; Peto, R. & Peto, J. 1972), as R
  ``survdiff`` and statsmodels ``survdiff``.
* Pearson chi-square without continuity correction on the k x 2 response
  table; the Fisher-Freeman-Halton exact test (Freeman, G. H. & Halton, J. H.
  1951, Biometrika 38:141-149) when an expected count is below 5 (scipy
  ``fisher_exact``; Monte Carlo for k > 2, with a fixed seed).
* Quantiles among responders: linear interpolation, R type 7 (Hyndman, R. J. &
  Fan, Y. 1996, The American Statistician 50:361-365), numpy's default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

__all__ = [
    "CI_METHODS",
    "FISHER_MC_RESAMPLES",
    "MEDIAN_TOLERANCE",
    "KaplanMeier",
    "cumulative_response_band",
    "kaplan_meier",
    "kaplan_meier_from_counts",
    "km_cumulative_response_at",
    "km_median",
    "km_median_ci",
    "logrank_test",
    "logrank_test_from_counts",
    "proportion_ci",
    "response_rate_test",
    "type7_quantiles",
]

CI_METHODS = ("wilson", "clopper-pearson")

#: Tolerance when comparing a Kaplan-Meier step (a floating-point product) with 0.5.
MEDIAN_TOLERANCE = 1e-12

#: Monte Carlo resamples for the Fisher-Freeman-Halton p-value of a k x 2 table with k > 2
#: (standard error of the estimated p-value <= 0.5 / sqrt(100 000) ~= 0.0016).
FISHER_MC_RESAMPLES = 99_999


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    """Two-sided standard normal quantile for ``confidence`` (0.95 -> 1.959964...)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(special.ndtri(0.5 + confidence / 2.0))


def _as_counts(values: np.ndarray | Sequence[int], name: str) -> np.ndarray:
    """Validate non-negative integer counts and return them as an int64 array."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        as_float = arr.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise ValueError(f"{name} must hold integer counts")
    out = arr.astype(np.int64)
    if np.any(out < 0):
        raise ValueError(f"{name} must be non-negative")
    return out


def _as_days(values: np.ndarray | Sequence[float], name: str = "day") -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric")
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: np.shape(a)[0] if np.ndim(a) else -1 for name, a in arrays.items()}
    if len(set(lengths.values())) != 1 or any(v < 0 for v in lengths.values()):
        raise ValueError(f"arrays must be one-dimensional with equal lengths: {lengths}")


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    arr.setflags(write=False)
    return arr


# --------------------------------------------------------------------------------------
# binomial proportions
# --------------------------------------------------------------------------------------


def proportion_ci(
    successes: np.ndarray,
    trials: np.ndarray,
    method: str = "wilson",
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised two-sided binomial confidence interval for ``successes / trials``.

    ``method="wilson"``: Wilson (1927) score interval *without* continuity correction,
    ``(k + z^2/2) / (n + z^2) -/+ z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4)``; equal to R
    ``prop.test(k, n, correct = FALSE)``, scipy ``binomtest(k, n).proportion_ci("wilson")``
    and statsmodels ``proportion_confint(k, n, method="wilson")``.

    ``method="clopper-pearson"``: Clopper & Pearson (1934) exact interval from beta
    quantiles, ``Beta(a/2; k, n-k+1)`` and ``Beta(1-a/2; k+1, n-k)``; equal to R
    ``binom.test``, scipy ``method="exact"`` and statsmodels ``method="beta"``.

    Arrays (or scalars) of integers, broadcast together. ``trials == 0`` gives NaN bounds.
    Bounds are clipped to [0, 1]; ``k == 0`` gives a lower bound of exactly 0 and ``k == n``
    an upper bound of exactly 1. Returns ``(low, high)`` as float arrays of the broadcast
    shape.
    """
    if method not in CI_METHODS:
        raise ValueError(f"method must be one of {CI_METHODS}, got {method!r}")
    z = _z(confidence)
    k, n = np.broadcast_arrays(_as_counts(successes, "successes"), _as_counts(trials, "trials"))
    if np.any(k > n):
        raise ValueError("successes must not exceed trials")
    kf = k.astype(np.float64)
    nf = n.astype(np.float64)
    empty = n == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "wilson":
            z2 = z * z
            denom = nf + z2
            centre = (kf + z2 / 2.0) / denom
            half = z / denom * np.sqrt(kf * (nf - kf) / nf + z2 / 4.0)
            low = centre - half
            high = centre + half
        else:
            alpha = 1.0 - confidence
            low = special.betaincinv(kf, nf - kf + 1.0, alpha / 2.0)
            high = special.betaincinv(kf + 1.0, nf - kf, 1.0 - alpha / 2.0)
    low = np.where(k == 0, 0.0, np.clip(low, 0.0, 1.0))
    high = np.where(k == n, 1.0, np.clip(high, 0.0, 1.0))
    low = np.where(empty, np.nan, low)
    high = np.where(empty, np.nan, high)
    return low, high


# --------------------------------------------------------------------------------------
# Kaplan-Meier
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KaplanMeier:
    """Kaplan-Meier estimate of S(t), the probability of no response by day t.

    One entry per distinct event-or-censoring day. ``ci_low``/``ci_high`` are the pointwise
    log-log (Kalbfleisch & Prentice) confidence limits of S(t) with Greenwood's variance,
    as R ``survfit(conf.type = "log-log")``; NaN where the transform is undefined, i.e.
    S(t) = 1 (no event yet) or S(t) = 0 (R's convention; lifelines reports 1.0 there).
    Arrays are read-only.
    """

    day: np.ndarray  # distinct event-or-censoring days, ascending
    n_at_risk: np.ndarray  # at risk just before day (censored that day still count)
    n_events: np.ndarray
    n_censored: np.ndarray
    survival: np.ndarray  # S(t) after the step at day
    ci_low: np.ndarray
    ci_high: np.ndarray

    @property
    def n_patients(self) -> int:
        """Number of patients in the analysis."""
        return int(self.n_at_risk[0]) if self.n_at_risk.size else 0

    @property
    def max_followup_day(self) -> int | float | None:
        """Last event or censoring day as a Python number (None for an empty cohort)."""
        return self.day[-1].item() if self.day.size else None


def _km_core(
    day: np.ndarray, n_events: np.ndarray, n_censored: np.ndarray, confidence: float
) -> KaplanMeier:
    """Kaplan-Meier from per-day counts (duplicates are summed, all-zero days dropped)."""
    z = _z(confidence)
    udays, inverse = np.unique(day, return_inverse=True)
    d = np.bincount(inverse, weights=n_events, minlength=udays.size).astype(np.int64)
    c = np.bincount(inverse, weights=n_censored, minlength=udays.size).astype(np.int64)
    keep = (d + c) > 0
    udays, d, c = udays[keep], d[keep], c[keep]
    removed = d + c
    # at risk just before day t_j: everyone minus those removed on earlier days
    n = removed.sum() - (np.cumsum(removed) - removed)
    df = d.astype(np.float64)
    nf = n.astype(np.float64)
    surv = np.cumprod(1.0 - df / nf)
    surv[d == n] = 0.0  # exact zero once everybody at risk had the event
    with np.errstate(divide="ignore", invalid="ignore"):
        # Greenwood: Var(log S) = sum d / (n (n - d)); infinite once S = 0
        green = np.cumsum(np.where(d == n, np.inf, df / (nf * (nf - df))))
        log_s = np.log(surv)
        # log-log: theta = log(-log S), se(theta) = sqrt(Var(log S)) / |log S|
        se_theta = np.sqrt(green) / np.abs(log_s)
        centre = np.log(-log_s)
        low = np.exp(-np.exp(centre + z * se_theta))
        high = np.exp(-np.exp(centre - z * se_theta))
    undefined = (surv <= 0.0) | (surv >= 1.0)
    low = np.where(undefined, np.nan, low)
    high = np.where(undefined, np.nan, high)
    return KaplanMeier(
        day=_frozen(udays),
        n_at_risk=_frozen(n),
        n_events=_frozen(d),
        n_censored=_frozen(c),
        survival=_frozen(surv),
        ci_low=_frozen(low),
        ci_high=_frozen(high),
    )


def kaplan_meier(day: np.ndarray, event: np.ndarray, confidence: float = 0.95) -> KaplanMeier:
    """Kaplan-Meier estimate of time to first response, one row per patient.

    ``day``: day of the event or of censoring per patient; ``event``: True (or 1) for a
    response, False (0) for right-censoring. Patients censored on an event day are counted
    at risk on that day (censoring happens after the events, as in R, SAS and lifelines).
    """
    days = _as_days(day)
    ev = np.asarray(event)
    _same_length(day=days, event=ev)
    if ev.size and not np.all((ev == 0) | (ev == 1)):
        raise ValueError("event must be boolean (or 0/1)")
    ev = ev.astype(bool)
    return _km_core(days, ev.astype(np.int64), (~ev).astype(np.int64), confidence)


def kaplan_meier_from_counts(
    day: np.ndarray,
    n_events: np.ndarray,
    n_censored: np.ndarray,
    confidence: float = 0.95,
) -> KaplanMeier:
    """Kaplan-Meier from per-day aggregated counts (``GROUP BY day``).

    Gives exactly the result of :func:`kaplan_meier` on the underlying patients. Repeated
    days are summed; days with no event and no censoring are ignored.
    """
    days = _as_days(day)
    d = _as_counts(n_events, "n_events")
    c = _as_counts(n_censored, "n_censored")
    _same_length(day=days, n_events=d, n_censored=c)
    return _km_core(days, d, c, confidence)


def _median_rule(day: np.ndarray, curve: np.ndarray) -> float | None:
    """The R/SAS median rule on a right-continuous step curve (NaN points skipped).

    Smallest day with curve < 0.5; if the curve is 0.5 (within MEDIAN_TOLERANCE) on a flat
    stretch [t1, t2) before dropping below at t2, the midpoint (t1 + t2) / 2. None when the
    curve never falls below 0.5 (including a curve that stays at 0.5 to its end).
    """
    ok = ~np.isnan(curve)
    day, curve = day[ok], curve[ok]
    below = np.flatnonzero(curve < 0.5 - MEDIAN_TOLERANCE)
    if below.size == 0:
        return None
    t2 = below[0]
    at_or_below = np.flatnonzero(curve <= 0.5 + MEDIAN_TOLERANCE)
    t1 = at_or_below[0]  # exists: t2 qualifies
    if t1 == t2:
        return float(day[t2])
    return (float(day[t1]) + float(day[t2])) / 2.0


def km_median(km: KaplanMeier) -> float | None:
    """Median time to response by the R/SAS rule (see ``specs/outcomes.md``).

    The smallest t with S(t) < 0.5; if S(t) equals 0.5 (within ``MEDIAN_TOLERANCE``, as S is
    a floating-point product) on a flat stretch [t1, t2), the midpoint (t1 + t2) / 2. None
    when S never falls below 0.5, or stays at 0.5 to the last follow-up.

    statsmodels ``SurvfuncRight.quantile(0.5)`` has no midpoint rule (it returns t2).
    """
    return _median_rule(km.day, km.survival)


def km_median_ci(km: KaplanMeier) -> tuple[float | None, float | None]:
    """Brookmeyer & Crowley (1982) confidence limits of the median, as R ``quantile.survfit``.

    The median rule applied to the lower pointwise (log-log) band of S gives the lower limit:
    the lower band falls below 0.5 first. Applied to the upper band it gives the upper limit.
    Points where the band is undefined (NaN) are skipped, as in R. An end not reached is None,
    so ``low <= km_median(km) <= high`` whenever all three are defined.

    statsmodels ``SurvfuncRight.quantile_ci(0.5, method="cloglog")`` inverts the same z-test
    (SAS's formulation) and agrees except that it has no midpoint rule and returns ``inf``
    for an upper limit that is not reached.
    """
    return _median_rule(km.day, km.ci_low), _median_rule(km.day, km.ci_high)


def km_cumulative_response_at(km: KaplanMeier, days: Sequence[int]) -> list[float | None]:
    """Cumulative probability of response 1 - S(t) at each landmark day.

    S is right-continuous: the value at t includes every step on days <= t (0.0 before the
    first day). None for a landmark after the last event or censoring day
    (``km.max_followup_day``), and for every landmark of an empty cohort.
    """
    landmarks = np.asarray(days, dtype=np.float64)
    if km.day.size == 0:
        return [None] * landmarks.size
    idx = np.searchsorted(km.day, landmarks, side="right") - 1
    cum = np.where(idx >= 0, 1.0 - km.survival[np.maximum(idx, 0)], 0.0)
    last = km.day[-1]
    return [None if t > last else float(v) for t, v in zip(landmarks, cum, strict=True)]


def cumulative_response_band(km: KaplanMeier) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The curve as published: ``(1 - S, 1 - S_upper, 1 - S_lower)`` per ``km.day``.

    The cumulative response is decreasing in S, so its lower limit comes from the upper band
    of S and vice versa. NaN limits stay NaN (no event yet, or everyone responded).
    """
    return 1.0 - km.survival, 1.0 - km.ci_high, 1.0 - km.ci_low


# --------------------------------------------------------------------------------------
# descriptive quantiles
# --------------------------------------------------------------------------------------


def type7_quantiles(
    values: np.ndarray, probs: Sequence[float] = (0.25, 0.5, 0.75)
) -> list[float | None]:
    """Quantiles with linear interpolation (R ``quantile(type = 7)``, numpy's default).

    ``None`` for every probability when ``values`` is empty.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if arr.size == 0:
        return [None] * p.size
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs must be in [0, 1]")
    return [float(q) for q in np.quantile(arr, p, method="linear")]


# --------------------------------------------------------------------------------------
# log-rank
# --------------------------------------------------------------------------------------


def _logrank_core(events: np.ndarray, removed: np.ndarray) -> tuple[float, int, float]:
    """k-group log-rank from (k groups x m ascending days) event and removal counts.

    O - E and the hypergeometric covariance summed over days, as R ``survdiff``:
    ``V_gh = sum_t d_t (n_t - d_t) / (n_t - 1) * p_gt (delta_gh - p_ht)`` with
    ``p_gt = n_gt / n_t``. Groups with zero expected events are dropped (R's rule) and the
    statistic uses the remaining groups but the first; df = remaining groups - 1.
    """
    n_group = removed.sum(axis=1)
    at_risk = n_group[:, None] - (np.cumsum(removed, axis=1) - removed)
    d = events.sum(axis=0).astype(np.float64)
    n = at_risk.sum(axis=0).astype(np.float64)
    used = d > 0
    d, n = d[used], n[used]
    p = at_risk[:, used] / n[None, :]
    observed = events[:, used].sum(axis=1).astype(np.float64)
    expected = p @ d
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(n > 1, d * (n - d) / (n - 1), 0.0)
    var = np.diag(p @ w) - (p * w[None, :]) @ p.T
    keep = np.flatnonzero(expected > 0)
    if keep.size < 2:
        return float("nan"), 0, float("nan")
    sub = keep[1:]
    diff = (observed - expected)[sub]
    v = var[np.ix_(sub, sub)]
    try:
        chisq = float(diff @ np.linalg.solve(v, diff))
    except np.linalg.LinAlgError:
        chisq = float(diff @ np.linalg.pinv(v) @ diff)
    dof = int(keep.size - 1)
    return chisq, dof, float(stats.chi2.sf(chisq, dof))


def _group_day_table(group: np.ndarray, day: np.ndarray, *columns: np.ndarray) -> list[np.ndarray]:
    """Sum ``columns`` into dense (group x ascending day) matrices."""
    _, g_idx = np.unique(group, return_inverse=True)
    _, t_idx = np.unique(day, return_inverse=True)
    k = int(g_idx.max()) + 1 if g_idx.size else 0
    m = int(t_idx.max()) + 1 if t_idx.size else 0
    flat = g_idx.ravel() * m + t_idx.ravel()
    return [
        np.bincount(flat, weights=col, minlength=k * m).astype(np.int64).reshape(k, m)
        for col in columns
    ]


def logrank_test(day: np.ndarray, event: np.ndarray, group: np.ndarray) -> tuple[float, int, float]:
    """k-group log-rank test of equal time-to-response distributions.

    Returns ``(chi-square, df, p)`` with df = k - 1 and ``p = P(chi2_df > chi-square)``;
    matches R ``survdiff`` and statsmodels ``survdiff``. Groups whose expected number of
    events is 0 (nobody at risk at any event day) are left out and reduce df, as in R. With
    fewer than two usable groups (or no event at all) there is no test: ``(nan, 0, nan)``.
    """
    days = _as_days(day)
    ev = np.asarray(event)
    grp = np.asarray(group)
    _same_length(day=days, event=ev, group=grp)
    if ev.size and not np.all((ev == 0) | (ev == 1)):
        raise ValueError("event must be boolean (or 0/1)")
    ev = ev.astype(np.int64)
    events, removed = _group_day_table(grp, days, ev, np.ones_like(ev))
    return _logrank_core(events, removed)


def logrank_test_from_counts(
    day: np.ndarray, group: np.ndarray, n_events: np.ndarray, n_censored: np.ndarray
) -> tuple[float, int, float]:
    """:func:`logrank_test` from per-(group, day) aggregated counts (repeats are summed)."""
    days = _as_days(day)
    grp = np.asarray(group)
    d = _as_counts(n_events, "n_events")
    c = _as_counts(n_censored, "n_censored")
    _same_length(day=days, group=grp, n_events=d, n_censored=c)
    events, removed = _group_day_table(grp, days, d, d + c)
    keep = removed.sum(axis=1) > 0  # a group listed only with zero counts has no patients
    return _logrank_core(events[keep], removed[keep])


# --------------------------------------------------------------------------------------
# response rates across groups
# --------------------------------------------------------------------------------------


def response_rate_test(
    responders: np.ndarray, totals: np.ndarray, seed: int = 20260101
) -> tuple[str, float | None, int, float]:
    """Compare response rates across k groups on the k x 2 (responders, non-responders) table.

    Groups with ``totals == 0`` are dropped first; k is the number of groups left.

    * Every expected count ``row_total * column_total / N`` is >= 5 (checked in exact
      integer arithmetic): ``("chi2", X2, k - 1, p)``, Pearson's chi-square without
      continuity correction (= scipy ``chi2_contingency(table, correction=False)``, R
      ``chisq.test(correct = FALSE)``).
    * Otherwise the Fisher-Freeman-Halton exact test, ``("fisher", None, k - 1, p)``:
      for k = 2 the exact two-sided Fisher p-value (scipy ``fisher_exact``, R
      ``fisher.test``); for k > 2 scipy 1.17 only estimates it by simulation:
      ``fisher_exact(table, method=MonteCarloMethod(n_resamples=FISHER_MC_RESAMPLES,
      rng=np.random.default_rng(seed)))`` with 99 999 tables drawn from the null with the
      observed margins and ``p = (1 + #{P(table) <= P(observed)}) / (1 + 99 999)``. The
      default seed 20260101 makes the p-value reproducible (R's
      ``fisher.test(simulate.p.value = TRUE, B = 99999)`` estimates the same quantity). The
      statistic is None because scipy's (an odds ratio for k = 2, the table's probability
      for k > 2) is not a test statistic comparable across k. When nobody (or everybody)
      responded only one table has these margins and p = 1.
    * Fewer than two groups with patients: no test, ``("none", None, 0, nan)``.
    """
    r = _as_counts(responders, "responders").ravel()
    n = _as_counts(totals, "totals").ravel()
    _same_length(responders=r, totals=n)
    if np.any(r > n):
        raise ValueError("responders must not exceed totals")
    keep = n > 0
    r, n = r[keep], n[keep]
    k = int(r.size)
    if k < 2:
        return "none", None, 0, float("nan")
    dof = k - 1
    table = np.column_stack([r, n - r])
    col = table.sum(axis=0)
    big_n = int(n.sum())
    # expected_ij = n_i * col_j / N >= 5  <=>  n_i * col_j >= 5 N (exact in integers)
    if np.all(n[:, None] * col[None, :] >= 5 * big_n):
        expected = n[:, None] * col[None, :] / big_n
        chisq = float(((table - expected) ** 2 / expected).sum())
        return "chi2", chisq, dof, float(stats.chi2.sf(chisq, dof))
    if np.any(col == 0):
        return "fisher", None, dof, 1.0
    if k == 2:
        res = stats.fisher_exact(table)
    else:
        method = stats.MonteCarloMethod(
            n_resamples=FISHER_MC_RESAMPLES, rng=np.random.default_rng(seed)
        )
        res = stats.fisher_exact(table, method=method)
    # scipy returns a shape-(1,) array instead of a scalar for some small tables
    p_value = float(np.asarray(res.pvalue, dtype=float).reshape(-1)[0])
    return "fisher", None, dof, min(p_value, 1.0)
