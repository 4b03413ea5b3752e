"""Outcome marts from the patient-level derivation (outcomes.md "Summaries", marts.md).

Counting happens in DuckDB SQL (``GROUP BY`` per stratum, per-day event and censoring counts per
stratum); the statistics happen in Python through ``ketamine_outcomes.statistics``, once per
stratum (never per patient); small cells are withheld by ``ketamine_outcomes.suppression``
before the frames are written back as tables of ``target_schema``:

* ``response_rates`` — indication x instrument x endpoint x population x stratum;
* ``time_to_response`` — indication x instrument x stratum (evaluable population);
* ``time_to_response_curve`` — the Kaplan-Meier step function, overall stratum only;
* ``indication_tests`` — exploratory comparisons across indications;
* ``attrition`` — why patients are not in each analysis.

Strata: ``overall``/``all``, ``site``, ``route`` (route of the first administration), ``sex``,
``age_band``. A stratum value gets rows when at least one ITT patient of the indication x
instrument has it; the overall row exists for every indication x instrument with a
non-quarantined patient, even when nobody is in ITT (zero denominators, NULL rates).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl

from ketamine_outcomes import statistics
from ketamine_outcomes.derivation import ANALYSES, ATTRITION_REASONS
from ketamine_outcomes.outcome_definitions import OutcomeDefinitions
from ketamine_outcomes.suppression import (
    OVERALL,
    gate_curve,
    suppress_attrition,
    suppress_response_rates,
    suppress_time_to_response,
)
from ketamine_outcomes.warehouse import quote_identifier

#: Stratification dimensions in publication order, and the patient_outcomes column of each.
STRATA: tuple[tuple[str, str | None], ...] = (
    ("overall", None),
    ("site", "site_id"),
    ("route", "route"),
    ("sex", "sex"),
    ("age_band", "age_band"),
)
#: Stratum value for a missing attribute (the staging contract makes it rare; never dropped).
UNKNOWN_STRATUM_VALUE = "unknown"
ENDPOINTS: tuple[str, ...] = ("end_of_induction", "ever")
POPULATIONS: tuple[str, ...] = ("ITT", "evaluable")
LOGRANK_ENDPOINT = "time_to_first_response"
KM_CI_METHOD = "log-log"

_KEYS_RATES = ["indication", "instrument", "endpoint", "population", "stratum", "stratum_value"]
_KEYS_TTR = ["indication", "instrument", "stratum", "stratum_value"]
_STRATUM_ORDER = {name: i for i, (name, _) in enumerate(STRATA)}
_COMMON_SCHEMA: dict[str, Any] = {
    "definition_version": pl.String,
    "run_id": pl.String,
    "built_at": pl.Datetime("us", "UTC"),
}


def response_rates_schema() -> dict[str, Any]:
    """Column order and types of ``response_rates`` (marts.md), without common columns."""
    return {
        "indication": pl.String,
        "instrument": pl.String,
        "endpoint": pl.String,
        "population": pl.String,
        "stratum": pl.String,
        "stratum_value": pl.String,
        "n_patients": pl.Int64,
        "n_responders": pl.Int64,
        "response_rate": pl.Float64,
        "response_ci_low": pl.Float64,
        "response_ci_high": pl.Float64,
        "n_remitters": pl.Int64,
        "remission_rate": pl.Float64,
        "remission_ci_low": pl.Float64,
        "remission_ci_high": pl.Float64,
        "response_definition": pl.String,
        "remission_definition": pl.String,
        "ci_method": pl.String,
        "suppressed": pl.Boolean,
    }


def time_to_response_schema(defs: OutcomeDefinitions) -> dict[str, Any]:
    """Column order and types of ``time_to_response``; one ``cum_response_d<day>`` column per
    configured landmark (the defaults give exactly the columns of marts.md)."""
    return {
        "indication": pl.String,
        "instrument": pl.String,
        "stratum": pl.String,
        "stratum_value": pl.String,
        "n_patients": pl.Int64,
        "n_responders": pl.Int64,
        "n_censored": pl.Int64,
        "median_days": pl.Float64,
        "median_ci_low": pl.Float64,
        "median_ci_high": pl.Float64,
        **{f"cum_response_d{day}": pl.Float64 for day in defs.landmarks},
        "max_followup_day": pl.Int32,
        "responders_median_days": pl.Float64,
        "responders_q1_days": pl.Float64,
        "responders_q3_days": pl.Float64,
        "responders_median_sessions": pl.Float64,
        "ci_method": pl.String,
        "suppressed": pl.Boolean,
    }


CURVE_SCHEMA: dict[str, Any] = {
    "indication": pl.String,
    "instrument": pl.String,
    "day": pl.Int32,
    "cum_response": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n_at_risk": pl.Int64,
}
INDICATION_TESTS_SCHEMA: dict[str, Any] = {
    "test": pl.String,
    "endpoint": pl.String,
    "instrument_family": pl.String,
    "indications": pl.String,
    "statistic": pl.Float64,
    "df": pl.Int32,
    "p_value": pl.Float64,
    "exploratory": pl.Boolean,
}
ATTRITION_SCHEMA: dict[str, Any] = {
    "indication": pl.String,
    "instrument": pl.String,
    "analysis": pl.String,
    "reason": pl.String,
    "n_patients": pl.Int64,
    "suppressed": pl.Boolean,
}


def build_outcome_marts(
    con: duckdb.DuckDBPyConnection,
    defs: OutcomeDefinitions,
    run_id: str,
    built_at: datetime,
    source_schema: str = "derived",
    target_schema: str = "build",
) -> dict[str, int]:
    """Build the five outcome marts in ``target_schema`` from ``<source_schema>.patient_outcomes``
    (made by ``derivation.derive_patient_outcomes``) and return their row counts.

    ``built_at`` must be timezone-aware (it is stored as a UTC ``TIMESTAMP WITH TIME ZONE``): a
    naive timestamp would be ambiguous for analysts in other time zones. Tables are replaced,
    so a re-run is idempotent.
    """
    if built_at.tzinfo is None or built_at.utcoffset() is None:
        raise ValueError("built_at must be timezone-aware (UTC)")
    source = quote_identifier(source_schema)
    target = quote_identifier(target_schema)
    common = {
        "definition_version": defs.definition_version,
        "run_id": run_id,
        "built_at": built_at.astimezone(UTC),
    }
    _stage_patient_strata(con, source)
    try:
        rates_counts = _rate_counts(con)
        rates = suppress_response_rates(_response_rates(rates_counts, defs), defs.min_cell_size)
        ttr_raw, curve_raw = _time_to_response(con, rates_counts, defs)
        ttr = suppress_time_to_response(ttr_raw, defs.min_cell_size)
        curve = gate_curve(curve_raw, ttr, defs.min_cell_size, defs.publish_curves)
        tests = _indication_tests(con, rates_counts, defs)
        attrition = suppress_attrition(_attrition(con, source), defs.min_cell_size)
    finally:
        con.execute("DROP TABLE IF EXISTS temp.main._ko_patient_strata")

    con.execute(f"CREATE SCHEMA IF NOT EXISTS {target}")
    marts = {
        "response_rates": (rates, response_rates_schema()),
        "time_to_response": (ttr, time_to_response_schema(defs)),
        "time_to_response_curve": (curve, CURVE_SCHEMA),
        "indication_tests": (tests, INDICATION_TESTS_SCHEMA),
        "attrition": (attrition, ATTRITION_SCHEMA),
    }
    counts: dict[str, int] = {}
    for table, (frame, schema) in marts.items():
        counts[table] = _write_mart(con, target, table, frame, schema, common)
    return counts


# ---------------------------------------------------------------------------------------------
# SQL aggregation
# ---------------------------------------------------------------------------------------------


def _stage_patient_strata(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """One row per analysed (non-quarantined) patient x instrument x stratum, as a temp table:
    every per-stratum count below is then a plain GROUP BY."""
    selects = []
    for name, column in STRATA:
        value = "'all'" if column is None else f"COALESCE({column}, '{UNKNOWN_STRATUM_VALUE}')"
        selects.append(
            f"SELECT *, '{name}' AS stratum, {value} AS stratum_value, "
            f"{_STRATUM_ORDER[name]} AS stratum_order "
            f"FROM {source}.patient_outcomes "
            "WHERE NOT quarantined AND indication IS NOT NULL AND instrument IS NOT NULL"
        )
    con.execute("CREATE OR REPLACE TEMP TABLE _ko_patient_strata AS " + " UNION ALL ".join(selects))


def _rate_counts(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Per indication x instrument x stratum: population sizes and numerators of each rate."""
    return con.sql(
        """
        SELECT
            indication, instrument, any_value(instrument_role) AS instrument_role,
            stratum, stratum_value, stratum_order,
            count(*) FILTER (WHERE in_itt) AS itt_n,
            count(*) FILTER (WHERE in_endpoint_evaluable) AS eoi_evaluable_n,
            count(*) FILTER (WHERE endpoint_response) AS eoi_responders,
            count(*) FILTER (WHERE endpoint_remission) AS eoi_remitters,
            count(*) FILTER (WHERE in_followup_evaluable) AS ever_evaluable_n,
            count(*) FILTER (WHERE ever_response) AS ever_responders,
            count(*) FILTER (WHERE ever_remission) AS ever_remitters
        FROM _ko_patient_strata
        GROUP BY indication, instrument, stratum, stratum_value, stratum_order
        HAVING stratum = 'overall' OR count(*) FILTER (WHERE in_itt) > 0
        ORDER BY indication, instrument, stratum_order, stratum_value
        """
    ).pl()


# ---------------------------------------------------------------------------------------------
# response_rates
# ---------------------------------------------------------------------------------------------


def _response_rates(counts: pl.DataFrame, defs: OutcomeDefinitions) -> pl.DataFrame:
    """Four rows per stratum (endpoint x population). Non-responder imputation for ITT: the
    numerators are the evaluable responders, the denominator all ITT patients."""
    numerators = {"end_of_induction": "eoi", "ever": "ever"}
    parts = []
    for endpoint in ENDPOINTS:
        prefix = numerators[endpoint]
        for population in POPULATIONS:
            denominator = "itt_n" if population == "ITT" else f"{prefix}_evaluable_n"
            parts.append(
                counts.select(
                    "indication",
                    "instrument",
                    pl.lit(endpoint).alias("endpoint"),
                    pl.lit(population).alias("population"),
                    "stratum",
                    "stratum_value",
                    "stratum_order",
                    pl.col(denominator).alias("n_patients"),
                    pl.col(f"{prefix}_responders").alias("n_responders"),
                    pl.col(f"{prefix}_remitters").alias("n_remitters"),
                )
            )
    frame = pl.concat(parts).sort(
        "indication", "instrument", "endpoint", "population", "stratum_order", "stratum_value"
    )
    n = frame["n_patients"].to_numpy()
    columns: dict[str, Any] = {}
    for measure, count_column in (("response", "n_responders"), ("remission", "n_remitters")):
        k = frame[count_column].to_numpy()
        low, high = statistics.proportion_ci(k, n, defs.ci_method, defs.confidence)
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(n > 0, k / np.maximum(n, 1), np.nan)
        columns[f"{measure}_rate"] = rate
        columns[f"{measure}_ci_low"] = low
        columns[f"{measure}_ci_high"] = high
    definitions = pl.DataFrame(
        {
            "instrument": list(defs.instruments),
            "response_definition": [d.response_definition for d in defs.instruments.values()],
            "remission_definition": [d.remission_definition for d in defs.instruments.values()],
        }
    )
    return (
        frame.with_columns(
            *(pl.Series(name, values).fill_nan(None) for name, values in columns.items()),
            ci_method=pl.lit(defs.ci_method),
            suppressed=pl.lit(False),
        )
        .join(definitions, on="instrument", how="left", maintain_order="left")
        .select(list(response_rates_schema()))
    )


# ---------------------------------------------------------------------------------------------
# time_to_response and its curve
# ---------------------------------------------------------------------------------------------


def _time_to_response(
    con: duckdb.DuckDBPyConnection, rate_counts: pl.DataFrame, defs: OutcomeDefinitions
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Kaplan-Meier per stratum from per-day event / censoring counts; raw (unsuppressed)
    ``time_to_response`` rows and the overall curve of every indication x instrument."""
    per_day = con.sql(
        """
        SELECT indication, instrument, stratum, stratum_value,
               time_to_response_day AS day,
               count(*) FILTER (WHERE response_event) AS n_events,
               count(*) FILTER (WHERE NOT response_event) AS n_censored
        FROM _ko_patient_strata
        WHERE in_followup_evaluable
        GROUP BY ALL
        ORDER BY indication, instrument, stratum, stratum_value, day
        """
    ).pl()
    responders = con.sql(
        """
        SELECT indication, instrument, stratum, stratum_value,
               list(response_day ORDER BY response_day) AS response_days,
               list(sessions_to_response ORDER BY sessions_to_response) AS sessions
        FROM _ko_patient_strata
        WHERE in_followup_evaluable AND response_event
        GROUP BY ALL
        """
    ).pl()
    days_by_stratum = per_day.partition_by(_KEYS_TTR, as_dict=True)
    responders_by_stratum = {
        tuple(row[k] for k in _KEYS_TTR): row for row in responders.iter_rows(named=True)
    }
    strata = rate_counts.sort("indication", "instrument", "stratum_order", "stratum_value")
    rows: list[dict[str, Any]] = []
    curves: list[pl.DataFrame] = []
    for stratum_row in strata.select(_KEYS_TTR).iter_rows(named=True):
        key = tuple(stratum_row[k] for k in _KEYS_TTR)
        counts = days_by_stratum.get(key)
        row: dict[str, Any] = {**stratum_row, "ci_method": KM_CI_METHOD, "suppressed": False}
        if counts is None or counts.height == 0:
            row.update(n_patients=0, n_responders=0, n_censored=0)
            rows.append(row)
            continue
        km = statistics.kaplan_meier_from_counts(
            counts["day"].to_numpy(),
            counts["n_events"].to_numpy(),
            counts["n_censored"].to_numpy(),
            defs.confidence,
        )
        median_low, median_high = statistics.km_median_ci(km)
        landmarks = statistics.km_cumulative_response_at(km, defs.landmarks)
        hit = responders_by_stratum.get(key)
        response_days = np.asarray(hit["response_days"] if hit else [], dtype=np.float64)
        sessions = np.asarray(hit["sessions"] if hit else [], dtype=np.float64)
        q1, median_day, q3 = statistics.type7_quantiles(response_days, (0.25, 0.5, 0.75))
        (median_sessions,) = statistics.type7_quantiles(sessions, (0.5,))
        row.update(
            n_patients=int(km.n_events.sum() + km.n_censored.sum()),
            n_responders=int(km.n_events.sum()),
            n_censored=int(km.n_censored.sum()),
            median_days=statistics.km_median(km),
            median_ci_low=median_low,
            median_ci_high=median_high,
            max_followup_day=km.max_followup_day,
            responders_median_days=median_day,
            responders_q1_days=q1,
            responders_q3_days=q3,
            responders_median_sessions=median_sessions,
            **{f"cum_response_d{d}": v for d, v in zip(defs.landmarks, landmarks, strict=True)},
        )
        rows.append(row)
        if stratum_row["stratum"] == OVERALL:
            cum, low, high = statistics.cumulative_response_band(km)
            curves.append(
                pl.DataFrame(
                    {
                        "indication": [stratum_row["indication"]] * km.day.size,
                        "instrument": [stratum_row["instrument"]] * km.day.size,
                        "day": km.day.astype(np.int32),
                        "cum_response": cum,
                        "ci_low": low,
                        "ci_high": high,
                        "n_at_risk": km.n_at_risk.astype(np.int64),
                    },
                    schema=CURVE_SCHEMA,
                ).with_columns(pl.col("ci_low", "ci_high").fill_nan(None))
            )
    schema = time_to_response_schema(defs)
    ttr = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    curve = pl.concat(curves) if curves else pl.DataFrame(schema=CURVE_SCHEMA)
    return ttr, curve


# ---------------------------------------------------------------------------------------------
# indication_tests
# ---------------------------------------------------------------------------------------------


def _indication_tests(
    con: duckdb.DuckDBPyConnection, rate_counts: pl.DataFrame, defs: OutcomeDefinitions
) -> pl.DataFrame:
    """Exploratory across-indication tests on primary instruments (overall stratum):
    one k-group log-rank per instrument family with >= 2 indications having evaluable
    patients, and one chi-square / Fisher test of ITT end-of-induction response across all
    indications with ITT patients."""
    rows: list[dict[str, Any]] = []
    per_day = con.sql(
        """
        SELECT indication, instrument, time_to_response_day AS day,
               count(*) FILTER (WHERE response_event) AS n_events,
               count(*) FILTER (WHERE NOT response_event) AS n_censored
        FROM _ko_patient_strata
        WHERE in_followup_evaluable AND stratum = 'overall' AND instrument_role = 'primary'
        GROUP BY ALL
        ORDER BY indication, day
        """
    ).pl()
    families = per_day.with_columns(
        instrument_family=pl.col("instrument").replace_strict(
            dict(defs.instrument_families), default=None, return_dtype=pl.String
        )
    )
    for family in sorted(families["instrument_family"].drop_nulls().unique().to_list()):
        group = families.filter(pl.col("instrument_family") == family)
        indications = sorted(group["indication"].unique().to_list())
        if len(indications) < 2:
            continue
        chi2, dof, p_value = statistics.logrank_test_from_counts(
            group["day"].to_numpy(),
            group["indication"].to_numpy(),
            group["n_events"].to_numpy(),
            group["n_censored"].to_numpy(),
        )
        rows.append(
            {
                "test": "logrank",
                "endpoint": LOGRANK_ENDPOINT,
                "instrument_family": family,
                "indications": ",".join(indications),
                "statistic": _finite_or_none(chi2),
                "df": dof,
                "p_value": _finite_or_none(p_value),
                "exploratory": True,
            }
        )

    itt = rate_counts.filter(
        (pl.col("stratum") == OVERALL)
        & (pl.col("instrument_role") == "primary")
        & (pl.col("itt_n") > 0)
    ).sort("indication")
    if itt.height >= 2:
        test, statistic, dof, p_value = statistics.response_rate_test(
            itt["eoi_responders"].to_numpy(), itt["itt_n"].to_numpy(), seed=defs.fisher_seed
        )
        if test != "none":
            rows.append(
                {
                    "test": test,
                    "endpoint": "end_of_induction",
                    "instrument_family": "all",
                    "indications": ",".join(itt["indication"].to_list()),
                    "statistic": _finite_or_none(statistic),
                    "df": dof,
                    "p_value": _finite_or_none(p_value),
                    "exploratory": True,
                }
            )
    if not rows:
        return pl.DataFrame(schema=INDICATION_TESTS_SCHEMA)
    return pl.DataFrame(rows, schema=INDICATION_TESTS_SCHEMA)


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return float(value)


# ---------------------------------------------------------------------------------------------
# attrition
# ---------------------------------------------------------------------------------------------


def _attrition(con: duckdb.DuckDBPyConnection, source: str) -> pl.DataFrame:
    """Patients not in each analysis, by their first applicable reason (unsuppressed). Only
    reasons that occur get a row; quarantined patients with an invalid indication keep
    indication and instrument NULL."""
    reason_order = ", ".join(f"'{r}'" for r in ATTRITION_REASONS)
    selects = " UNION ALL ".join(
        f"SELECT indication, instrument, '{analysis}' AS analysis, "
        f"attrition_{analysis} AS reason, {i} AS analysis_order "
        f"FROM {source}.patient_outcomes WHERE attrition_{analysis} IS NOT NULL"
        for i, analysis in enumerate(ANALYSES)
    )
    return con.sql(
        f"""
        SELECT indication, instrument, analysis, reason, count(*) AS n_patients,
               FALSE AS suppressed
        FROM ({selects})
        GROUP BY indication, instrument, analysis, reason, analysis_order
        ORDER BY indication NULLS LAST, instrument NULLS LAST, analysis_order,
                 list_position([{reason_order}], reason)
        """
    ).pl()


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def _write_mart(
    con: duckdb.DuckDBPyConnection,
    target: str,
    table: str,
    frame: pl.DataFrame,
    schema: dict[str, Any],
    common: dict[str, Any],
) -> int:
    """Cast to the mart's declared types (all-NULL columns must not lose their type), add the
    common columns, and replace ``<target>.<table>``. The frame is registered under a name no
    Python variable uses, so DuckDB's replacement scan cannot pick up something else."""
    typed = frame.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])
    typed = typed.with_columns(
        *(pl.lit(value, dtype=_COMMON_SCHEMA[name]).alias(name) for name, value in common.items())
    )
    view = f"_ko_mart_frame_{table}"
    con.register(view, typed)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {target}.{table} AS SELECT * FROM {view}")
    finally:
        con.unregister(view)
    return typed.height
