"""Outcome marts (outcomes.md "Summaries", "Disclosure control"; marts.md), built end to end
from hand-derived cohorts in real DuckDB files, and cross-checked against independent
implementations (statsmodels SurvfuncRight / survdiff / proportion_confint, scipy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats
from statsmodels.duration.survfunc import SurvfuncRight, survdiff
from statsmodels.stats.proportion import proportion_confint

from ketamine_outcomes.outcome_definitions import OutcomeDefinitions, load_definitions
from ketamine_outcomes.summaries import build_outcome_marts
from ketamine_outcomes.suppression import COMMON_COLUMNS, mart_descriptions
from tests.outcome_cohorts import MARTS_MD_COLUMNS, Cohort, derived, random_cohort

BUILT_AT = datetime(2026, 1, 15, 6, 30, tzinfo=UTC)
MARTS = ("response_rates", "time_to_response", "time_to_response_curve", "indication_tests")
MARTS += ("attrition",)


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTCOMES_DEFINITIONS", raising=False)


def definitions(tmp_path: Path, text: str = "") -> OutcomeDefinitions:
    if not text:
        return load_definitions()
    path = tmp_path / "override.yaml"
    path.write_text(text, encoding="utf-8")
    return load_definitions(path)


def build(
    cohort: Cohort, tmp_path: Path, defs: OutcomeDefinitions
) -> tuple[duckdb.DuckDBPyConnection, dict[str, int]]:
    con = derived(cohort, tmp_path, defs)
    counts = build_outcome_marts(con, defs, run_id="run-1", built_at=BUILT_AT)
    return con, counts


def mart(con: duckdb.DuckDBPyConnection, table: str, where: str = "TRUE") -> list[dict[str, Any]]:
    return con.sql(f"SELECT * FROM build.{table} WHERE {where}").pl().to_dicts()


def one(con: duckdb.DuckDBPyConnection, table: str, where: str) -> dict[str, Any]:
    rows = mart(con, table, where)
    assert len(rows) == 1, (table, where, rows)
    return rows[0]


# ---------------------------------------------------------------------------------------------
# A hand-derived MDD cohort (60 ITT patients), everything on site S1, F, 35-44, IV
# ---------------------------------------------------------------------------------------------


def mdd_cohort() -> Cohort:
    """Groups of 12 MDD patients, sessions on days 0, 7, 14, 21 (baseline MADRS 30):

    R  day 28: 12 -> response (60 %), no remission (12 > 10); PHQ-9 20 -> 8 (response only)
    M  day 28:  8 -> response and remission
    N  day 28: 25 -> neither
    F  day 14: 10 (response + remission), day 28: 28 -> endpoint neither, ever both
    X  no follow-up at all -> ITT, not evaluable
    L  (3 patients) baseline MADRS 15 < 20 -> not evaluable (baseline_below_minimum)
    """
    cohort = Cohort()
    groups = {
        "R": {0: 30, 28: 12},
        "M": {0: 30, 28: 8},
        "N": {0: 30, 28: 25},
        "F": {0: 30, 14: 10, 28: 28},
        "X": {0: 30},
    }
    for group, scores in groups.items():
        for i in range(12):
            pid = cohort.patient(f"MDD_{group}{i:02d}", sessions=(0, 7, 14, 21), scores=scores)
            if group == "R":
                cohort.rate(pid, "PHQ9", {0: 20, 28: 8})
    for i in range(3):
        cohort.patient(f"MDD_L{i:02d}", sessions=(0, 7), scores={0: 15, 28: 5})
    return cohort


def test_response_rates_hand_derived(tmp_path: Path):
    defs = definitions(tmp_path)
    con, counts = build(mdd_cohort(), tmp_path, defs)
    # (endpoint, population): n, responders, remitters
    #   end_of_induction ITT:       60 (R M N F X), 24 (R M), 12 (M)   -> NRI for X
    #   end_of_induction evaluable: 48 (R M N F),   24,       12
    #   ever ITT:                   60,             36 (R M F), 24 (M F)
    #   ever evaluable:             48,             36,         24
    expected = {
        ("end_of_induction", "ITT"): (60, 24, 12),
        ("end_of_induction", "evaluable"): (48, 24, 12),
        ("ever", "ITT"): (60, 36, 24),
        ("ever", "evaluable"): (48, 36, 24),
    }
    rows = mart(con, "response_rates", "instrument = 'MADRS'")
    # 4 endpoint x population combinations x 5 strata (each stratum holds everybody)
    assert len(rows) == 20
    assert {(r["stratum"], r["stratum_value"]) for r in rows} == {
        ("overall", "all"),
        ("site", "S1"),
        ("route", "IV"),
        ("sex", "F"),
        ("age_band", "35-44"),
    }
    for row in rows:
        n, k, r = expected[(row["endpoint"], row["population"])]
        assert (row["n_patients"], row["n_responders"], row["n_remitters"]) == (n, k, r)
        assert row["response_rate"] == pytest.approx(k / n, abs=1e-12)
        assert row["remission_rate"] == pytest.approx(r / n, abs=1e-12)
        low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (row["response_ci_low"], row["response_ci_high"]) == pytest.approx(
            (low, high), abs=1e-9
        )
        low, high = proportion_confint(r, n, alpha=0.05, method="wilson")
        assert (row["remission_ci_low"], row["remission_ci_high"]) == pytest.approx(
            (low, high), abs=1e-9
        )
        assert row["response_definition"] == ">= 50 % reduction in MADRS"
        assert row["remission_definition"] == "MADRS <= 10"
        assert (row["ci_method"], row["suppressed"]) == ("wilson", False)
        assert row["definition_version"] == defs.definition_version
        assert row["run_id"] == "run-1"
    # Wilson 24 / 60 by hand: centre (24 + 1.92) / 63.84 = 0.40602; half-width
    # 1.96 / 63.84 * sqrt(24 * 36 / 60 + 0.96) = 0.12033 -> [0.2857, 0.5263]
    itt = one(
        con,
        "response_rates",
        "instrument = 'MADRS' AND endpoint = 'end_of_induction' AND population = 'ITT' "
        "AND stratum = 'overall'",
    )
    assert itt["response_ci_low"] == pytest.approx(0.2857, abs=1e-4)
    assert itt["response_ci_high"] == pytest.approx(0.5263, abs=1e-4)
    assert (
        counts["response_rates"]
        == con.execute("SELECT count(*) FROM build.response_rates").fetchone()[0]
    )


def test_secondary_instrument_gets_rows_in_every_patient_mart(tmp_path: Path):
    con, _ = build(mdd_cohort(), tmp_path, definitions(tmp_path))
    # PHQ-9 of the 12 R patients: 20 -> 8 is a 60 % response, 8 > 4 no remission
    phq = one(
        con,
        "response_rates",
        "instrument = 'PHQ9' AND endpoint = 'end_of_induction' AND population = 'ITT' "
        "AND stratum = 'overall'",
    )
    assert (phq["indication"], phq["n_patients"], phq["n_responders"], phq["n_remitters"]) == (
        "MDD",
        12,
        12,
        0,
    )
    assert phq["remission_definition"] == "PHQ-9 <= 4" and not phq["suppressed"]
    ttr = one(con, "time_to_response", "instrument = 'PHQ9' AND stratum = 'overall'")
    assert (ttr["n_patients"], ttr["n_responders"], ttr["n_censored"]) == (12, 12, 0)
    # secondary instruments are not compared across indications
    assert mart(con, "indication_tests") == []


def test_time_to_response_hand_derived(tmp_path: Path):
    con, _ = build(mdd_cohort(), tmp_path, definitions(tmp_path))
    # evaluable 48: events day 14 (F, 12), day 28 (R + M, 24); censored day 28 (N, 12)
    #   S(14) = 36/48 = 0.75; S(28) = 0.75 * (36 - 24) / 36 = 0.25
    #   median = 28 (first S < 0.5); landmarks d1 0, d7 0, d14 0.25, d28 0.75, d84 NULL
    #   (84 > max follow-up 28). Among responders: 12 x day 14, 24 x day 28 -> type 7
    #   Q1 = x[8.75] = 14, median = x[17.5] = 28, Q3 = 28; sessions before day 14 = 2
    #   (days 0, 7), before day 28 = 4 -> median 4.
    row = one(con, "time_to_response", "instrument = 'MADRS' AND stratum = 'overall'")
    assert (row["n_patients"], row["n_responders"], row["n_censored"]) == (48, 36, 12)
    assert row["median_days"] == 28
    assert [row[f"cum_response_d{d}"] for d in (1, 7, 14, 28, 84)] == pytest.approx(
        [0.0, 0.0, 0.25, 0.75, None]
    )
    assert row["max_followup_day"] == 28
    assert (row["responders_q1_days"], row["responders_median_days"]) == (14, 28)
    assert (row["responders_q3_days"], row["responders_median_sessions"]) == (28, 4)
    assert (row["ci_method"], row["suppressed"]) == ("log-log", False)
    curve = mart(con, "time_to_response_curve", "instrument = 'MADRS'")
    assert [(c["day"], c["cum_response"], c["n_at_risk"]) for c in curve] == [
        (14, 0.25, 48),
        (28, 0.75, 36),
    ]
    # pointwise band of 1 - S at day 14 from Greenwood by hand: Var(log S) = 12 / (48 * 36)
    s, var = 0.75, 12 / (48 * 36)
    theta_se = np.sqrt(var) / abs(np.log(s))
    z = stats.norm.ppf(0.975)
    s_low, s_high = (np.exp(-np.exp(np.log(-np.log(s)) + sign * z * theta_se)) for sign in (1, -1))
    assert (curve[0]["ci_low"], curve[0]["ci_high"]) == pytest.approx(
        (1 - s_high, 1 - s_low), abs=1e-12
    )


def test_attrition_hand_derived(tmp_path: Path):
    cohort = mdd_cohort()
    cohort.quarantine("QUAR_UNKNOWN", None)
    con, _ = build(cohort, tmp_path, definitions(tmp_path))
    rows = {
        (r["indication"], r["instrument"], r["analysis"], r["reason"]): (
            r["n_patients"],
            r["suppressed"],
        )
        for r in mart(con, "attrition")
    }
    assert rows == {
        # X: 12 without follow-up; L: 3 below MADRS 20 (withheld: 1-10)
        ("MDD", "MADRS", "end_of_induction", "no_endpoint_assessment"): (12, False),
        ("MDD", "MADRS", "end_of_induction", "baseline_below_minimum"): (None, True),
        ("MDD", "MADRS", "ever", "no_followup_in_window"): (12, False),
        ("MDD", "MADRS", "ever", "baseline_below_minimum"): (None, True),
        ("MDD", "MADRS", "time_to_response", "no_followup_in_window"): (12, False),
        ("MDD", "MADRS", "time_to_response", "baseline_below_minimum"): (None, True),
        # a quarantined patient whose indication was invalid: one (withheld) count per analysis
        (None, None, "end_of_induction", "quarantined_patient_row"): (None, True),
        (None, None, "ever", "quarantined_patient_row"): (None, True),
        (None, None, "time_to_response", "quarantined_patient_row"): (None, True),
    }


# ---------------------------------------------------------------------------------------------
# Kaplan-Meier corner cases (min_cell_size 1: nothing withheld, so the numbers are visible)
# ---------------------------------------------------------------------------------------------


def km_cohort() -> Cohort:
    cohort = Cohort()
    sessions = (0, 3, 6, 10)
    # MDD: ties of an event and a censoring on day 7
    cohort.patient("TIE_EV7", sessions=sessions, scores={0: 30, 7: 15})  # event day 7
    cohort.patient("TIE_CE7", sessions=sessions, scores={0: 30, 7: 20})  # censored day 7
    cohort.patient("TIE_EV14", sessions=sessions, scores={0: 30, 7: 25, 14: 12})  # event 14
    cohort.patient("TIE_CE21", sessions=sessions, scores={0: 30, 21: 20})  # censored day 21
    # CRPS: S = 0.75, 0.5, 0.25 at days 3, 6, 10 -> flat at exactly 0.5 on [6, 10)
    cohort.patient("FLAT_3", "CRPS", scores={0: "8.0", 3: "5.0"})
    cohort.patient("FLAT_6", "CRPS", scores={0: "8.0", 6: "5.0"})
    cohort.patient("FLAT_10", "CRPS", scores={0: "8.0", 10: "5.0"})
    cohort.patient("FLAT_C12", "CRPS", scores={0: "8.0", 12: "7.0"})
    # DPN: S = 0.5 from day 5 to the last follow-up on day 10 -> median not reached
    cohort.patient("HALF_5", "DPN", scores={0: "8.0", 5: "5.0"})
    cohort.patient("HALF_C10", "DPN", scores={0: "8.0", 10: "7.0"})
    return cohort


def test_kaplan_meier_ties_landmarks_and_flat_median(tmp_path: Path):
    defs = definitions(tmp_path, "min_cell_size: 1")
    con, _ = build(km_cohort(), tmp_path, defs)
    # MDD: day 7 at risk 4, 1 event (the censored patient of day 7 still counts at risk):
    # S(7) = 3/4; day 14 at risk 2, 1 event: S = 3/8; day 21 censored: S = 3/8.
    mdd = one(con, "time_to_response", "indication = 'MDD' AND stratum = 'overall'")
    assert (mdd["n_patients"], mdd["n_responders"], mdd["n_censored"]) == (4, 2, 2)
    assert mdd["median_days"] == 14
    # landmarks: d1 before any event = 0; d7 = 0.25; d14 = 0.625; d28 and d84 after the last
    # follow-up (21) -> NULL
    assert [mdd[f"cum_response_d{d}"] for d in (1, 7, 14, 28, 84)] == pytest.approx(
        [0.0, 0.25, 0.625, None, None]
    )
    assert mdd["max_followup_day"] == 21
    # responders' days [7, 14]: Q1 = 8.75, median 10.5, Q3 = 12.25; sessions before day 7
    # (days 0, 3, 6) = 3, before day 14 = 4 -> median 3.5
    assert (mdd["responders_q1_days"], mdd["responders_median_days"]) == (8.75, 10.5)
    assert (mdd["responders_q3_days"], mdd["responders_median_sessions"]) == (12.25, 3.5)
    curve = mart(con, "time_to_response_curve", "indication = 'MDD'")
    assert [(c["day"], c["n_at_risk"]) for c in curve] == [(7, 4), (14, 2), (21, 1)]
    assert [c["cum_response"] for c in curve] == pytest.approx([0.25, 0.625, 0.625])
    # CRPS: S = 0.5 exactly on [6, 10): median = (6 + 10) / 2 = 8 (R / SAS rule)
    crps = one(con, "time_to_response", "indication = 'CRPS' AND stratum = 'overall'")
    assert crps["median_days"] == 8
    # DPN: S stays at 0.5 to the last follow-up (day 10): not reached; d7 = 0.5, d14 NULL
    dpn = one(con, "time_to_response", "indication = 'DPN' AND stratum = 'overall'")
    assert dpn["median_days"] is None
    assert (dpn["cum_response_d7"], dpn["cum_response_d14"]) == (0.5, None)
    # one log-rank per family with >= 2 indications having data: pain (CRPS, DPN) only
    tests = mart(con, "indication_tests", "test = 'logrank'")
    assert [(t["instrument_family"], t["indications"], t["df"]) for t in tests] == [
        ("pain", "CRPS,DPN", 1)
    ]


# ---------------------------------------------------------------------------------------------
# Cross-checks against independent implementations on generated cohorts
# ---------------------------------------------------------------------------------------------


def step(times: np.ndarray, values: np.ndarray, t: float, before: float) -> float:
    i = np.searchsorted(times, t, side="right") - 1
    return before if i < 0 else float(values[i])


def test_kaplan_meier_matches_statsmodels(tmp_path: Path):
    defs = definitions(tmp_path)
    con, _ = build(random_cohort(300, seed=11, indications=("MDD",)), tmp_path, defs)
    patients = con.sql(
        "SELECT sex, time_to_response_day AS day, response_event AS event "
        "FROM derived.patient_outcomes WHERE in_followup_evaluable"
    ).pl()
    z = stats.norm.ppf(0.975)
    checked = 0
    for stratum, value, subset in [
        ("overall", "all", patients),
        ("sex", "F", patients.filter(pl.col("sex") == "F")),
        ("sex", "M", patients.filter(pl.col("sex") == "M")),
    ]:
        row = one(
            con,
            "time_to_response",
            f"stratum = '{stratum}' AND stratum_value = '{value}' AND instrument = 'MADRS'",
        )
        assert not row["suppressed"], "the generated cohort must be large enough"
        time = subset["day"].to_numpy().astype(float)
        status = subset["event"].to_numpy().astype(int)
        sf = SurvfuncRight(time, status)
        assert row["n_patients"] == len(time) and row["n_responders"] == status.sum()
        # median: statsmodels has no midpoint rule, so S must not be exactly 0.5 here
        assert not np.any(np.isclose(sf.surv_prob, 0.5, atol=1e-12))
        assert row["median_days"] == pytest.approx(sf.quantile(0.5), abs=1e-6)
        low, high = sf.quantile_ci(0.5, alpha=0.05, method="cloglog")
        assert row["median_ci_low"] == pytest.approx(low, abs=1e-6)
        assert row["median_ci_high"] == (None if np.isinf(high) else pytest.approx(high))
        for day in defs.landmarks:
            expected = 1 - step(sf.surv_times, sf.surv_prob, day, 1.0)
            got = row[f"cum_response_d{day}"]
            assert got == (None if day > time.max() else pytest.approx(expected, abs=1e-6))
        assert row["max_followup_day"] == time.max()
        responders = time[status == 1]
        assert row["responders_median_days"] == pytest.approx(np.median(responders))
        checked += 1
        if stratum != "overall":
            continue
        curve = mart(con, "time_to_response_curve", "instrument = 'MADRS'")
        assert [c["day"] for c in curve] == sorted(set(time))
        for c in curve:
            s = step(sf.surv_times, sf.surv_prob, c["day"], 1.0)
            se = step(sf.surv_times, sf.surv_prob_se, c["day"], 0.0)
            assert c["cum_response"] == pytest.approx(1 - s, abs=1e-6)
            at_risk = int((time >= c["day"]).sum())
            assert c["n_at_risk"] == (at_risk if at_risk >= 11 else None)
            if 0 < s < 1:
                theta_se = se / (s * abs(np.log(s)))
                s_low = np.exp(-np.exp(np.log(-np.log(s)) + z * theta_se))
                s_high = np.exp(-np.exp(np.log(-np.log(s)) - z * theta_se))
                assert c["ci_low"] == pytest.approx(1 - s_high, abs=1e-6)
                assert c["ci_high"] == pytest.approx(1 - s_low, abs=1e-6)
            else:
                assert c["ci_low"] is None and c["ci_high"] is None
        assert any(c["n_at_risk"] is None for c in curve)  # the tail falls below 11
    assert checked == 3


def test_indication_tests_match_statsmodels_and_scipy(tmp_path: Path):
    defs = definitions(tmp_path)
    con, _ = build(random_cohort(400, seed=5), tmp_path, defs)
    patients = con.sql("SELECT * FROM derived.patient_outcomes").pl()
    ttr = patients.filter(pl.col("in_followup_evaluable"))
    tests = {(t["test"], t["instrument_family"]): t for t in mart(con, "indication_tests")}
    for family, indications in (("depression_anxiety", ["GAD", "MDD"]), ("pain", ["CRPS", "DPN"])):
        subset = ttr.filter(pl.col("indication").is_in(indications))
        chisq, p_value = survdiff(
            subset["time_to_response_day"].to_numpy().astype(float),
            subset["response_event"].to_numpy().astype(int),
            subset["indication"].to_numpy(),
        )
        row = tests[("logrank", family)]
        assert row["indications"] == ",".join(indications)
        assert row["endpoint"] == "time_to_first_response" and row["df"] == 1
        assert row["statistic"] == pytest.approx(chisq, abs=1e-6)
        assert row["p_value"] == pytest.approx(p_value, abs=1e-6)
        assert row["exploratory"] is True
    # chi-square (no continuity correction) on ITT end-of-induction response, 4 x 2
    table = (
        patients.filter(pl.col("in_itt"))
        .group_by("indication")
        .agg(
            responders=pl.col("endpoint_response").fill_null(False).sum(),
            n=pl.len(),
        )
        .sort("indication")
    )
    k, n = table["responders"].to_numpy(), table["n"].to_numpy()
    chi2, p_value, dof, expected = stats.chi2_contingency(
        np.column_stack([k, n - k]), correction=False
    )
    assert expected.min() >= 5
    row = tests[("chi2", "all")]
    assert (row["endpoint"], row["indications"], row["df"]) == (
        "end_of_induction",
        "CRPS,DPN,GAD,MDD",
        3,
    )
    assert row["statistic"] == pytest.approx(chi2, abs=1e-9)
    assert row["p_value"] == pytest.approx(p_value, abs=1e-9)


def test_fisher_when_an_expected_count_is_below_5(tmp_path: Path):
    cohort = Cohort()
    # MDD: 2 of 3 respond at the endpoint; GAD: 0 of 3. Table [[2, 1], [0, 3]], margins 3, 3 /
    # 2, 4: P(a) = C(3, a) C(3, 2 - a) / C(6, 2): P(0) = P(2) = 3/15, P(1) = 9/15. Two-sided
    # p = P(0) + P(2) = 0.4. Expected responders 1 < 5 -> Fisher.
    for i, score in enumerate((10, 12, 25)):
        cohort.patient(f"MDD_{i}", scores={0: 30, 28: score})
    for i in range(3):
        cohort.patient(f"GAD_{i}", "GAD", scores={0: 15, 28: 14})
    con, _ = build(cohort, tmp_path, definitions(tmp_path))
    row = one(con, "indication_tests", "instrument_family = 'all'")
    assert (row["test"], row["endpoint"], row["indications"]) == (
        "fisher",
        "end_of_induction",
        "GAD,MDD",
    )
    assert row["statistic"] is None and row["df"] == 1
    assert row["p_value"] == pytest.approx(0.4, abs=1e-12)


def test_fisher_monte_carlo_is_reproducible(tmp_path: Path):
    cohort = Cohort()
    for indication, responders in (("MDD", 2), ("GAD", 0), ("OCD", 1)):
        start = {"MDD": 30, "GAD": 15, "OCD": 30}[indication]
        for i in range(4):
            end = start // 4 if i < responders else start - 1
            cohort.patient(f"{indication}_{i}", indication, scores={0: start, 28: end})
    defs = definitions(tmp_path)
    con, _ = build(cohort, tmp_path, defs)
    first = one(con, "indication_tests", "instrument_family = 'all'")
    build_outcome_marts(con, defs, run_id="run-2", built_at=BUILT_AT)
    second = one(con, "indication_tests", "instrument_family = 'all'")
    assert (first["test"], first["df"], first["indications"]) == ("fisher", 2, "GAD,MDD,OCD")
    assert first["p_value"] == second["p_value"]
    assert 0 < first["p_value"] <= 1


def test_clopper_pearson_is_configurable(tmp_path: Path):
    defs = definitions(tmp_path, "ci_method: clopper-pearson")
    con, _ = build(mdd_cohort(), tmp_path, defs)
    for row in mart(con, "response_rates", "stratum = 'overall'"):
        k, n = row["n_responders"], row["n_patients"]
        low, high = proportion_confint(k, n, alpha=0.05, method="beta")
        assert row["ci_method"] == "clopper-pearson"
        assert (row["response_ci_low"], row["response_ci_high"]) == pytest.approx(
            (low, high), abs=1e-9
        )


# ---------------------------------------------------------------------------------------------
# Disclosure control end to end
# ---------------------------------------------------------------------------------------------


def test_small_cells_and_complementary_suppression_end_to_end(tmp_path: Path):
    cohort = Cohort()
    # 30 ITT MDD patients: site A 5 (withheld), site B 12 (the next-smallest other site:
    # complementary), site C 13. Everyone responds at day 28 except 12 of site C.
    for i in range(30):
        site = "A" if i < 5 else "B" if i < 17 else "C"
        score = 25 if i >= 18 else 10
        cohort.patient(f"P{i:03d}", site_id=site, sessions=(0, 7), scores={0: 30, 28: score})
    con, _ = build(cohort, tmp_path, definitions(tmp_path))
    sites = {
        r["stratum_value"]: r
        for r in mart(
            con,
            "response_rates",
            "stratum = 'site' AND endpoint = 'end_of_induction' AND population = 'ITT'",
        )
    }
    assert sites["A"]["n_patients"] is None and sites["A"]["suppressed"]
    assert sites["B"]["n_patients"] is None and sites["B"]["suppressed"]  # complementary
    # site C: 13 patients, 1 responder (withheld) and 12 non-responders; remission likewise
    assert sites["C"]["n_patients"] == 13 and sites["C"]["n_responders"] is None
    overall = one(
        con,
        "response_rates",
        "stratum = 'overall' AND endpoint = 'end_of_induction' AND population = 'ITT'",
    )
    assert (overall["n_patients"], overall["n_responders"], overall["suppressed"]) == (
        30,
        18,
        False,
    )
    # time to response: overall 30 patients, 18 events, 12 censored -> published with a curve
    # (n_at_risk 30 on day 28); site rows A and C entirely withheld
    ttr_sites = {r["stratum_value"]: r for r in mart(con, "time_to_response", "stratum = 'site'")}
    # (A: 5 patients; C: 1 responder), B (12 responders, 0 censored) published: two strata
    # already withhold the row, so no complementary suppression is needed
    assert ttr_sites["A"]["suppressed"] and ttr_sites["A"]["median_days"] is None
    assert ttr_sites["C"]["suppressed"] and ttr_sites["C"]["n_patients"] is None
    assert not ttr_sites["B"]["suppressed"] and ttr_sites["B"]["n_responders"] == 12
    curve = mart(con, "time_to_response_curve")
    assert [(c["day"], c["n_at_risk"]) for c in curve] == [(28, 30)]


def test_curve_not_published_when_the_overall_row_is_suppressed(tmp_path: Path):
    cohort = Cohort()
    # 20 patients, 5 respond: n_responders 5 is withheld -> overall row suppressed, no curve
    for i in range(20):
        cohort.patient(f"P{i:03d}", scores={0: 30, 28: 10 if i < 5 else 25})
    con, counts = build(cohort, tmp_path, definitions(tmp_path))
    row = one(con, "time_to_response", "stratum = 'overall'")
    assert row["suppressed"] and row["n_patients"] is None and row["cum_response_d28"] is None
    assert counts["time_to_response_curve"] == 0


def test_publish_curves_false(tmp_path: Path):
    con, counts = build(mdd_cohort(), tmp_path, definitions(tmp_path, "publish_curves: false"))
    assert counts["time_to_response_curve"] == 0
    assert con.execute("SELECT count(*) FROM build.time_to_response_curve").fetchone() == (0,)


# ---------------------------------------------------------------------------------------------
# The public interface: columns, types, common columns, catalog
# ---------------------------------------------------------------------------------------------


def test_marts_have_exactly_the_columns_of_marts_md_and_are_documented(tmp_path: Path):
    con, counts = build(km_cohort(), tmp_path, definitions(tmp_path))
    catalog = mart_descriptions()
    for table in MARTS:
        columns = [c for c, *_ in con.execute(f"DESCRIBE build.{table}").fetchall()]
        assert columns == [*MARTS_MD_COLUMNS[table].split(), *COMMON_COLUMNS], table
        assert set(columns) <= set(catalog[table]["columns"]), table
        assert counts[table] == con.execute(f"SELECT count(*) FROM build.{table}").fetchone()[0]
    types = {c: t for c, t, *_ in con.execute("DESCRIBE build.response_rates").fetchall()}
    assert (types["n_patients"], types["response_rate"]) == ("BIGINT", "DOUBLE")
    assert (types["suppressed"], types["stratum_value"]) == ("BOOLEAN", "VARCHAR")
    built_at = con.execute(
        "SELECT DISTINCT typeof(built_at), built_at = TIMESTAMPTZ '2026-01-15 06:30:00+00' "
        "FROM build.attrition"
    ).fetchall()
    assert built_at == [("TIMESTAMP WITH TIME ZONE", True)]


def test_empty_marts_keep_their_columns(tmp_path: Path):
    con, counts = build(Cohort(), tmp_path, definitions(tmp_path))
    assert counts == dict.fromkeys(MARTS, 0)
    for table in MARTS:
        columns = [c for c, *_ in con.execute(f"DESCRIBE build.{table}").fetchall()]
        assert columns == [*MARTS_MD_COLUMNS[table].split(), *COMMON_COLUMNS]


def test_built_at_must_be_timezone_aware_and_is_stored_in_utc(tmp_path: Path):
    defs = definitions(tmp_path)
    con = derived(mdd_cohort(), tmp_path, defs)
    with pytest.raises(ValueError, match="timezone-aware"):
        build_outcome_marts(con, defs, run_id="r", built_at=datetime(2026, 1, 15, 6, 30))
    local = BUILT_AT.astimezone(timezone(timedelta(hours=-5)))
    build_outcome_marts(con, defs, run_id="r", built_at=local)
    (stored,) = con.execute("SELECT DISTINCT built_at FROM build.response_rates").fetchone()
    assert stored == BUILT_AT
