"""Patient-level outcome derivation (outcomes.md "Patient-level derivation", "Populations").

One bulk DuckDB SQL pass turns the staging tables into ``<schema>.patient_outcomes``: one row per
patient x analysed instrument holding everything the summaries need (baseline, populations,
endpoint and ever status, time to first response, sessions to response, attrition reason per
analysis). No per-patient Python: the cohort may be large, and SQL keeps every rule visible in
one place.

Thresholds are compared on exact DECIMAL values (scores are ``DECIMAL(6,1)``, thresholds
``DECIMAL(9,4)``): ``100 * (baseline - score) >= pct * baseline``. In binary floating point NRS
7.0 -> 4.9 and 6.0 -> 4.2 would wrongly be non-responses at 30 %.

Inputs (the staging interface): ``staging.current_patients``, ``staging.current_treatments``,
``staging.current_assessments``, ``staging.current_adverse_events``,
``staging.quarantined_patients``. The ``current_*`` inputs are first copied once into
``<schema>.current_*`` (``warehouse.materialise_current``) and the statement reads those: the
views recompute supersession at every reference, and the statement refers to the current
assessments four times and the treatments twice (at 1M patients, 14 hash aggregates of which
most were supersession, docs/performance.md item 8). The safety tables
(``safety.build_safety_tables``) read the same copies, so one build sees one supersession.

Attrition reasons (per analysis, the first that applies, outcomes.md "Disclosure control"):

=========================== =================================================================
``quarantined_patient_row`` every patient row of the patient was quarantined
``no_administration``       no treatment row, so no day 0
``no_baseline``             no assessment of the instrument in the baseline window
``baseline_zero``           baseline score 0 (a relative reduction is undefined)
``baseline_below_minimum``  baseline below the instrument's minimum severity
``no_endpoint_assessment``  (end_of_induction) no assessment in the endpoint window
``no_followup_in_window``   (ever, time_to_response) no assessment in the follow-up window
=========================== =================================================================
"""

from __future__ import annotations

import duckdb

from ketamine_outcomes.fault_injection import maybe_crash
from ketamine_outcomes.outcome_definitions import OutcomeDefinitions
from ketamine_outcomes.warehouse import (
    materialise_current,
    quote_identifier,
)

#: Attrition reasons in the order they are checked (the first that applies wins).
ATTRITION_REASONS: tuple[str, ...] = (
    "quarantined_patient_row",
    "no_administration",
    "no_baseline",
    "baseline_zero",
    "baseline_below_minimum",
    "no_endpoint_assessment",
    "no_followup_in_window",
)
#: The analyses patients can drop out of (marts.attrition.analysis).
ANALYSES: tuple[str, ...] = ("end_of_induction", "ever", "time_to_response")

_FLOAT_TYPES = {"FLOAT", "REAL", "DOUBLE", "FLOAT4", "FLOAT8"}
# Exact type of every threshold: wide enough for any instrument range, exact for tenths.
_THRESHOLD_TYPE = "DECIMAL(9,4)"


def derive_patient_outcomes(
    con: duckdb.DuckDBPyConnection, defs: OutcomeDefinitions, schema: str = "derived"
) -> None:
    """Create ``<schema>.patient_outcomes`` and its helper tables from the staging interface.

    Tables (replaced on every call, so a re-run is idempotent):

    * ``current_patients``, ``current_treatments``, ``current_assessments``,
      ``current_adverse_events`` — the supersession views evaluated once for this build;
    * ``instrument_thresholds`` — the effective per-instrument thresholds as exact decimals;
    * ``indication_instruments`` — indication x instrument pairs that can be analysed: the
      primary instrument (role ``primary``) and every secondary instrument (role ``secondary``);
    * ``patient_outcomes`` — one row per patient x analysed instrument (see module docstring
      and ``PATIENT_OUTCOME_COLUMNS``).
    """
    s = quote_identifier(schema)
    _check_score_type(con)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
    materialise_current(con, schema)
    write_helper_tables(con, defs, s)
    maybe_crash("derive")
    con.execute(f"CREATE OR REPLACE TABLE {s}.patient_outcomes AS "
                f"{patient_outcomes_query(defs, s)}")


def write_helper_tables(con: duckdb.DuckDBPyConnection, defs: OutcomeDefinitions,
                        s: str) -> None:
    """``instrument_thresholds`` and ``indication_instruments`` in the quoted schema ``s``."""
    _write_thresholds(con, defs, s)
    _write_indication_instruments(con, defs, s)


def _check_score_type(con: duckdb.DuckDBPyConnection) -> None:
    """Refuse binary floating-point scores: exact comparisons need DECIMAL or integers."""
    # DESCRIBE resolves the name exactly as the derivation's queries will (views included)
    columns = {
        str(name): str(data_type).upper()
        for name, data_type, *_ in con.execute("DESCRIBE staging.current_assessments").fetchall()
    }
    if "score" not in columns:
        raise ValueError("staging.current_assessments has no score column")
    data_type = columns["score"]
    if data_type in _FLOAT_TYPES:
        raise TypeError(
            f"staging.current_assessments.score is {data_type}: thresholds are compared "
            "exactly, scores must be DECIMAL (or integer), never binary floating point"
        )


def _write_thresholds(con: duckdb.DuckDBPyConnection, defs: OutcomeDefinitions, s: str) -> None:
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {s}.instrument_thresholds (
            instrument VARCHAR PRIMARY KEY,
            instrument_family VARCHAR,
            response_reduction_pct {_THRESHOLD_TYPE} NOT NULL,
            remission_max {_THRESHOLD_TYPE} NOT NULL,
            min_baseline {_THRESHOLD_TYPE} NOT NULL,
            response_definition VARCHAR NOT NULL,
            remission_definition VARCHAR NOT NULL
        )
        """
    )
    rows = [
        (
            name,
            defs.instrument_families.get(name),
            # strings keep the decimals exact all the way into DuckDB
            str(d.response_reduction_pct),
            str(d.remission_max),
            str(d.min_baseline),
            d.response_definition,
            d.remission_definition,
        )
        for name, d in defs.instruments.items()
    ]
    con.executemany(
        f"INSERT INTO {s}.instrument_thresholds VALUES (?, ?, CAST(? AS {_THRESHOLD_TYPE}), "
        f"CAST(? AS {_THRESHOLD_TYPE}), CAST(? AS {_THRESHOLD_TYPE}), ?, ?)",
        rows,
    )


def _write_indication_instruments(
    con: duckdb.DuckDBPyConnection, defs: OutcomeDefinitions, s: str
) -> None:
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {s}.indication_instruments (
            indication VARCHAR NOT NULL,
            instrument VARCHAR NOT NULL,
            instrument_role VARCHAR NOT NULL,
            PRIMARY KEY (indication, instrument)
        )
        """
    )
    rows: list[tuple[str, str, str]] = []
    for indication, primary in defs.primary_instruments.items():
        rows.append((indication, primary, "primary"))
        rows.extend(
            (indication, secondary, "secondary")
            for secondary in defs.secondary_instruments
            if secondary != primary
        )
    con.executemany(f"INSERT INTO {s}.indication_instruments VALUES (?, ?, ?)", rows)


def patient_outcomes_query(defs: OutcomeDefinitions, s: str, scope: str | None = None) -> str:
    """The query of ``<s>.patient_outcomes`` (columns in ``PATIENT_OUTCOME_COLUMNS`` order).

    ``scope``: the name of a table of patient ids; every input is then restricted to those
    patients (each patient's rows depend on that patient's rows only), which is how
    ``rederive`` re-derives the patients a new export touched."""
    b, e, f = defs.baseline_window, defs.endpoint_window, defs.followup_window
    secondary = ", ".join(f"'{name}'" for name in defs.secondary_instruments) or "NULL"
    version = defs.definition_version.replace("'", "''")

    def source(table: str) -> str:
        if scope is None:
            return table
        return f"(SELECT * FROM {table} WHERE patient_id IN (SELECT patient_id FROM {scope}))"

    cur_patients, cur_assessments, cur_treatments, quarantined = (
        source(f"{s}.current_patients"), source(f"{s}.current_assessments"),
        source(f"{s}.current_treatments"), source("staging.quarantined_patients"))
    return f"""
    WITH
    patients AS (
        SELECT patient_id, site_id, indication, sex, age_band, FALSE AS quarantined
        FROM {cur_patients}
        UNION ALL
        -- patients whose only patient rows were quarantined (indication NULL when invalid)
        SELECT q.patient_id, NULL, q.indication, NULL, NULL, TRUE
        FROM {quarantined} AS q
        WHERE NOT EXISTS (
            SELECT 1 FROM {s}.current_patients AS p WHERE p.patient_id = q.patient_id
        )
    ),
    secondary_collected AS (
        SELECT DISTINCT patient_id, instrument
        FROM {cur_assessments}
        WHERE instrument IN ({secondary})
    ),
    pairs AS (
        -- the primary instrument of the patient's indication (NULL if the indication is unknown)
        SELECT p.*, ii.instrument, COALESCE(ii.instrument_role, 'primary') AS instrument_role
        FROM patients AS p
        LEFT JOIN {s}.indication_instruments AS ii
            ON ii.indication = p.indication AND ii.instrument_role = 'primary'
        UNION ALL
        -- secondary instruments wherever the patient has at least one assessment of them
        SELECT p.*, sc.instrument, 'secondary'
        FROM patients AS p
        JOIN secondary_collected AS sc USING (patient_id)
        WHERE NOT EXISTS (
            SELECT 1 FROM {s}.indication_instruments AS ii
            WHERE ii.indication = p.indication AND ii.instrument = sc.instrument
              AND ii.instrument_role = 'primary'
        )
    ),
    treatment AS (
        SELECT
            patient_id,
            count(*) AS n_administrations,
            -- route of the first administration: smallest day, then smallest session_number
            first(route ORDER BY day, session_number) AS first_route
        FROM {cur_treatments}
        GROUP BY patient_id
    ),
    baseline AS (
        -- the LAST assessment in the baseline window (day 0 is pre-dose)
        SELECT patient_id, instrument, max(day) AS baseline_day,
               arg_max(score, day) AS baseline_score
        FROM {cur_assessments}
        WHERE day BETWEEN {b.start} AND {b.end}
        GROUP BY patient_id, instrument
    ),
    endpoint AS (
        -- the LAST assessment in the endpoint (end of induction) window
        SELECT patient_id, instrument, max(day) AS endpoint_day,
               arg_max(score, day) AS endpoint_score
        FROM {cur_assessments}
        WHERE day BETWEEN {e.start} AND {e.end}
        GROUP BY patient_id, instrument
    ),
    followup_rated AS (
        SELECT
            a.patient_id, a.instrument, a.day,
            CASE WHEN bl.baseline_score > 0 THEN
                100 * (bl.baseline_score - a.score) >= t.response_reduction_pct * bl.baseline_score
            END AS meets_response,
            a.score <= t.remission_max AS meets_remission
        FROM {cur_assessments} AS a
        JOIN {s}.instrument_thresholds AS t USING (instrument)
        LEFT JOIN baseline AS bl USING (patient_id, instrument)
        WHERE a.day BETWEEN {f.start} AND {f.end}
    ),
    followup AS (
        SELECT
            patient_id, instrument,
            count(*) AS n_followup_assessments,
            max(day) AS last_followup_day,
            bool_or(meets_response) AS any_response,
            bool_or(meets_remission) AS any_remission,
            min(day) FILTER (WHERE meets_response) AS first_response_day
        FROM followup_rated
        GROUP BY patient_id, instrument
    ),
    sessions AS (
        -- administrations strictly before the response day (ratings precede that day's dose)
        SELECT fu.patient_id, fu.instrument, count(*) AS n_sessions_before_response
        FROM followup AS fu
        JOIN {cur_treatments} AS tr
            ON tr.patient_id = fu.patient_id AND tr.day < fu.first_response_day
        WHERE fu.first_response_day IS NOT NULL
        GROUP BY fu.patient_id, fu.instrument
    ),
    assembled AS (
        SELECT
            pr.patient_id, pr.indication, pr.instrument, pr.instrument_role, pr.quarantined,
            pr.site_id, pr.sex, pr.age_band,
            tr.first_route AS route,
            COALESCE(tr.n_administrations, 0) AS n_administrations,
            bl.baseline_day, bl.baseline_score,
            th.min_baseline,
            th.response_reduction_pct,
            th.remission_max,
            ep.endpoint_day, ep.endpoint_score,
            fu.n_followup_assessments, fu.last_followup_day,
            fu.any_response, fu.any_remission, fu.first_response_day,
            se.n_sessions_before_response,
            (NOT pr.quarantined AND bl.baseline_score IS NOT NULL AND bl.baseline_score > 0
                AND bl.baseline_score >= th.min_baseline) IS TRUE AS evaluable_baseline
        FROM pairs AS pr
        LEFT JOIN {s}.instrument_thresholds AS th ON th.instrument = pr.instrument
        LEFT JOIN treatment AS tr ON tr.patient_id = pr.patient_id
        LEFT JOIN baseline AS bl
            ON bl.patient_id = pr.patient_id AND bl.instrument = pr.instrument
        LEFT JOIN endpoint AS ep
            ON ep.patient_id = pr.patient_id AND ep.instrument = pr.instrument
        LEFT JOIN followup AS fu
            ON fu.patient_id = pr.patient_id AND fu.instrument = pr.instrument
        LEFT JOIN sessions AS se
            ON se.patient_id = pr.patient_id AND se.instrument = pr.instrument
    ),
    populations AS (
        SELECT
            *,
            evaluable_baseline AND n_administrations >= 1 AS in_itt,
            endpoint_day IS NOT NULL AS has_endpoint,
            n_followup_assessments IS NOT NULL AS has_followup,
            CASE
                WHEN quarantined THEN 'quarantined_patient_row'
                WHEN n_administrations = 0 THEN 'no_administration'
                WHEN baseline_score IS NULL THEN 'no_baseline'
                WHEN baseline_score = 0 THEN 'baseline_zero'
                WHEN baseline_score < min_baseline THEN 'baseline_below_minimum'
            END AS itt_exclusion
        FROM assembled
    )
    SELECT
        patient_id, indication, instrument, instrument_role, quarantined,
        site_id, sex, age_band, route, n_administrations,
        baseline_day, baseline_score, evaluable_baseline, in_itt,
        -- end of induction (landmark); status only for the evaluable endpoint population
        has_endpoint, endpoint_day, endpoint_score,
        in_itt AND has_endpoint AS in_endpoint_evaluable,
        CASE WHEN in_itt AND has_endpoint THEN
            100 * (baseline_score - endpoint_score) >= response_reduction_pct * baseline_score
        END AS endpoint_response,
        CASE WHEN in_itt AND has_endpoint THEN endpoint_score <= remission_max
        END AS endpoint_remission,
        -- any time in the follow-up window
        has_followup, last_followup_day,
        in_itt AND has_followup AS in_followup_evaluable,
        CASE WHEN in_itt AND has_followup THEN any_response END AS ever_response,
        CASE WHEN in_itt AND has_followup THEN any_remission END AS ever_remission,
        -- time to first response (evaluable population): event day, or censored at the last
        -- assessment day in the follow-up window
        CASE WHEN in_itt AND has_followup THEN first_response_day END AS response_day,
        CASE WHEN in_itt AND has_followup
            THEN COALESCE(first_response_day, last_followup_day) END AS time_to_response_day,
        CASE WHEN in_itt AND has_followup
            THEN first_response_day IS NOT NULL END AS response_event,
        CASE WHEN in_itt AND has_followup AND first_response_day IS NOT NULL
            THEN COALESCE(n_sessions_before_response, 0) END AS sessions_to_response,
        -- attrition per analysis: NULL when the patient is in the analysis
        COALESCE(itt_exclusion, CASE WHEN NOT has_endpoint THEN 'no_endpoint_assessment' END)
            AS attrition_end_of_induction,
        COALESCE(itt_exclusion, CASE WHEN NOT has_followup THEN 'no_followup_in_window' END)
            AS attrition_ever,
        COALESCE(itt_exclusion, CASE WHEN NOT has_followup THEN 'no_followup_in_window' END)
            AS attrition_time_to_response,
        '{version}' AS definition_version
    FROM populations
    ORDER BY indication NULLS LAST, instrument NULLS LAST, patient_id
    """


#: Columns of ``<schema>.patient_outcomes`` (documentation and a test oracle).
PATIENT_OUTCOME_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "indication",
    "instrument",
    "instrument_role",
    "quarantined",
    "site_id",
    "sex",
    "age_band",
    "route",
    "n_administrations",
    "baseline_day",
    "baseline_score",
    "evaluable_baseline",
    "in_itt",
    "has_endpoint",
    "endpoint_day",
    "endpoint_score",
    "in_endpoint_evaluable",
    "endpoint_response",
    "endpoint_remission",
    "has_followup",
    "last_followup_day",
    "in_followup_evaluable",
    "ever_response",
    "ever_remission",
    "response_day",
    "time_to_response_day",
    "response_event",
    "sessions_to_response",
    "attrition_end_of_induction",
    "attrition_ever",
    "attrition_time_to_response",
    "definition_version",
)
