"""Safety monitoring: ``marts.safety_events`` and the safety signal checks (no Dagster here).

Inputs (the internal warehouse): ``derived.current_patients``, ``derived.current_treatments``,
``derived.current_adverse_events`` (the supersession views materialised once per build,
``warehouse.materialise_current``); the per-export tables ``staging.<table>`` (``export_id``)
and ``ops.data_quality`` (which export carried which table file, and when it was exported).
Counting is bulk DuckDB SQL; the only Python arithmetic is vectorised numpy over mart rows or
over the nine event types, never over patients or events.

Two steps, because the mart and the signal checks need the same session and attribution
tables and run in different Dagster steps (often different processes, so temporary tables do
not carry over): ``build_safety_tables`` writes ``derived.safety_sessions`` (monitored
sessions) and ``derived.safety_attributed_events`` (the ASOF attribution) once per build, in
the ``patient_outcomes`` step; ``build_safety_events`` and ``safety_signals`` only read them
(docs/performance.md item 5: built in each consumer, they were computed twice per build). The
tables do not depend on the outcome definitions (the dose band is applied by the readers), so
a reader with other definitions never sees bands of a previous configuration, and the checks
see the same sessions as the mart they are attached to.

Choices (docs/decisions.md "Safety monitoring" says why):

* **Monitored patients.** Adverse events are optional in an export, and a session delivered
  by an export without an ``adverse_events`` file was not monitored: counting it would dilute
  every rate. A patient is monitored when some accepted export that carried an
  ``adverse_events`` file (even an empty one) delivered any row of theirs; only monitored
  patients' sessions count. No export with the file -> no session -> an empty mart.
* **Attribution.** An event belongs to the session it followed: the patient's administration
  on the event day, else the latest administration before it (two administrations on one day:
  the higher session number, the later one). Route and dose band are that session's. An event
  with no administration on or before its day (or of a patient without an accepted patient
  row) is not in the mart; ``unattributed_events`` counts them (Dagster metadata).
* **Dose band** from ``dose_mg_per_kg`` and the configured ``safety_dose_bands`` (upper bounds
  inclusive, compared as the same IEEE double the staged dose is, so 0.5 is ``<=0.5``);
  ``safety_unknown_dose_band`` without an mg/kg dose.
* **Cells.** One row per indication x route x dose band with >= 1 monitored session, times
  every adverse-event type of the export contract, so zero-event cells are visible. No
  ``ALL`` roll-up rows: session, event and serious counts add up over rows (an analyst's
  ``SUM`` and the report stay right), and patient counts, which do not add up, cannot be
  differenced between a roll-up and its cells.
* **Suppression** exactly per outcomes.md (``suppression.suppress_safety_events``): patient
  counts of 1-10 (``n_patients``, ``n_patients_with_event`` or its complement) withhold the
  row's patient counts, patient rate and CI; session, event and serious counts and events per
  100 sessions stay.
* **Signals** (``safety_signals``): per event type, events per session of the recent sessions
  against the earlier ones. Exports carry only relative days, so the calendar is the exports'
  own: a session's time is the ``exported_at`` of the first export that delivered it
  (``validated_at`` for an export without a manifest time), and it is *recent* when that time
  is at most ``recent_window_days`` before the newest export's. An event takes the period of
  the session it is attributed to, so numerator and denominator are the same sessions. A
  signal fires when the recent rate exceeds the configured threshold, or when it is
  significantly higher than the earlier rate by the one-sided exact conditional binomial test
  of two Poisson rates (R ``poisson.test``; ``SIGNAL_TEST``). Rates are shown per 100
  sessions with exact Poisson (Garwood) confidence intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import duckdb
import numpy as np
import polars as pl
from scipy import stats

import data_contracts
from ketamine_outcomes import statistics
from ketamine_outcomes.outcome_definitions import OutcomeDefinitions
from ketamine_outcomes.summaries import _write_mart
from ketamine_outcomes.suppression import suppress_safety_events
from ketamine_outcomes.warehouse import quote_identifier, table_names

#: Column order and types of ``safety_events`` (marts.md), without the common columns.
SAFETY_EVENTS_SCHEMA: dict[str, Any] = {
    "indication": pl.String,
    "route": pl.String,
    "dose_band": pl.String,
    "event": pl.String,
    "n_sessions": pl.Int64,
    "n_events": pl.Int64,
    "events_per_100_sessions": pl.Float64,
    "n_patients": pl.Int64,
    "n_patients_with_event": pl.Int64,
    "patient_event_rate": pl.Float64,
    "patient_event_ci_low": pl.Float64,
    "patient_event_ci_high": pl.Float64,
    "n_serious": pl.Int64,
    "suppressed": pl.Boolean,
}

#: The rise test, as stated in every check result.
SIGNAL_TEST = (
    "one-sided exact conditional binomial test of two Poisson rates (events per session, "
    "recent vs earlier); R poisson.test(c(recent_events, earlier_events), "
    "c(recent_sessions, earlier_sessions), alternative = 'greater')"
)
#: Confidence interval of the rates in the signal metadata.
RATE_CI_METHOD = "exact Poisson (Garwood)"

#: Tables of ``build_safety_tables`` (in its schema, ``derived`` in the pipeline).
SESSIONS_TABLE = "safety_sessions"
ATTRIBUTED_EVENTS_TABLE = "safety_attributed_events"


def adverse_event_types() -> tuple[str, ...]:
    """The configured adverse-event types (export contract enum), in contract order."""
    return data_contracts.table_contract("adverse_events").column("event").enum or ()


def _routes() -> tuple[str, ...]:
    return data_contracts.table_contract("treatments").column("route").enum or ()


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_sql_string(v) for v in values) + "]::VARCHAR[]"


def dose_band_sql(defs: OutcomeDefinitions, column: str = "dose_mg_per_kg") -> str:
    """SQL ``CASE`` giving the dose band of ``column`` (mg/kg, DOUBLE).

    Bounds are cast from their decimal text to DOUBLE, the type of the staged dose: a dose
    exported as ``0.5`` and the bound ``0.5`` are then the same double, so an inclusive upper
    bound is honoured exactly even for bounds such as 0.3 that binary floating point cannot
    represent.
    """
    parts = [f"CASE WHEN {column} IS NULL THEN {_sql_string(defs.safety_unknown_dose_band)}"]
    for band in defs.safety_dose_bands:
        label = _sql_string(band.label)
        if band.max_mg_per_kg is None:
            parts.append(f"ELSE {label}")
        else:
            bound = format(band.max_mg_per_kg, "f")
            parts.append(f"WHEN {column} <= CAST('{bound}' AS DOUBLE) THEN {label}")
    return " ".join(parts) + " END"


def _band_order(defs: OutcomeDefinitions) -> list[str]:
    return [b.label for b in defs.safety_dose_bands] + [defs.safety_unknown_dose_band]


def safety_tables_sql(schema: str = "derived", scope: str | None = None) -> tuple[str, str]:
    """The queries of ``<schema>.safety_sessions`` and ``<schema>.safety_attributed_events``
    (``build_safety_tables``); ``scope``: a table of patient ids to restrict them to (each
    patient's rows depend on that patient's rows only)."""
    s = quote_identifier(schema)
    def in_scope(alias: str = "") -> str:
        return f"{alias}patient_id IN (SELECT patient_id FROM {scope})" if scope else "TRUE"

    per_export = " UNION ".join(
        f"SELECT patient_id FROM staging.{c.name} WHERE export_id IN (SELECT export_id FROM "
        "ae_exports)"
        for c in data_contracts.table_contracts()
    )
    sessions = f"""
        WITH ae_exports AS (
            SELECT DISTINCT export_id FROM ops.data_quality
            WHERE table_name = 'adverse_events' AND status = 'accepted' AND NOT blocked
        ), monitored AS ({per_export})
        SELECT t.patient_id, t.day, t.session_number, p.indication, t.route, t.dose_mg_per_kg
        FROM {s}.current_treatments t
        JOIN {s}.current_patients p USING (patient_id)
        WHERE t.patient_id IN (SELECT patient_id FROM monitored) AND {in_scope('t.')}
        """
    # ASOF: the latest administration day <= the event day; the last session of that day.
    attributed = f"""
        WITH last_of_day AS (
            SELECT patient_id, day, max(session_number) AS session_number
            FROM {s}.{SESSIONS_TABLE} WHERE {in_scope()} GROUP BY patient_id, day
        )
        SELECT e.patient_id, e.day AS event_day, e.event, e.serious,
               l.day AS session_day, l.session_number
        FROM (SELECT * FROM {s}.current_adverse_events WHERE {in_scope()}) e
        ASOF JOIN last_of_day l ON e.patient_id = l.patient_id AND e.day >= l.day
        """
    return sessions, attributed


def build_safety_tables(con: duckdb.DuckDBPyConnection, schema: str = "derived",
                        scope: str | None = None) -> None:
    """``<schema>.safety_sessions`` (monitored sessions, one row per current administration
    of a monitored patient with an accepted patient row: patient, day, session number,
    indication, route, mg/kg dose) and ``<schema>.safety_attributed_events`` (one row per
    current adverse event that has a session on or before its day, with that session's day
    and number).

    Reads ``<schema>.current_*`` (``warehouse.materialise_current`` first; the pipeline's
    ``derive_patient_outcomes`` does that). Each table is replaced in one statement, so a
    crash leaves the previous build's table or the new one; sessions are written first and
    the events read them, and the next build replaces both.
    """
    s = quote_identifier(schema)
    sessions, attributed = safety_tables_sql(schema, scope)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
    for table, query in ((SESSIONS_TABLE, sessions), (ATTRIBUTED_EVENTS_TABLE, attributed)):
        if scope is None:
            con.execute(f"CREATE OR REPLACE TABLE {s}.{table} AS {query}")
        else:  # incremental (rederive.py): only the scope's patients, inside its transaction
            con.execute(f"DELETE FROM {s}.{table} "
                        f"WHERE patient_id IN (SELECT patient_id FROM {scope})")
            con.execute(f"INSERT INTO {s}.{table} {query}")


def _safety_tables(con: duckdb.DuckDBPyConnection, schema: str) -> str:
    """The quoted schema of ``build_safety_tables``' output; a clear error when it is missing
    (a consumer run against a warehouse that was never derived by this version)."""
    present = table_names(con, schema)
    missing = [t for t in (SESSIONS_TABLE, ATTRIBUTED_EVENTS_TABLE) if t not in present]
    if missing:
        raise RuntimeError(
            f"{', '.join(f'{schema}.{t}' for t in missing)} missing: run the derivation first "
            "(patient_outcomes; safety.build_safety_tables)"
        )
    return quote_identifier(schema)


def _sessions_sql(defs: OutcomeDefinitions, s: str) -> str:
    """Monitored sessions with their dose band under ``defs``."""
    return (
        f"SELECT patient_id, day, session_number, indication, route, "
        f"{dose_band_sql(defs, 'dose_mg_per_kg')} AS dose_band FROM {s}.{SESSIONS_TABLE}"
    )


# ---------------------------------------------------------------------------------------------
# marts.safety_events
# ---------------------------------------------------------------------------------------------


def build_safety_events(
    con: duckdb.DuckDBPyConnection,
    defs: OutcomeDefinitions,
    run_id: str,
    built_at: datetime,
    target_schema: str = "build",
    source_schema: str = "derived",
) -> int:
    """Build ``<target_schema>.safety_events`` (marts.md) and return its row count.

    Reads the tables of ``build_safety_tables`` in ``source_schema``. ``built_at`` must be
    timezone-aware (stored as UTC ``TIMESTAMPTZ`` like every mart). The table is replaced, so
    a re-run is idempotent. Without monitored sessions (no export carried an
    ``adverse_events`` file) the mart is empty but keeps its columns.
    """
    if built_at.tzinfo is None or built_at.utcoffset() is None:
        raise ValueError("built_at must be timezone-aware (UTC)")
    target = quote_identifier(target_schema)
    counts = _cell_counts(con, defs, _safety_tables(con, source_schema))
    n = counts["n_patients"].to_numpy()
    k = counts["n_patients_with_event"].to_numpy()
    low, high = statistics.proportion_ci(k, n, defs.ci_method, defs.confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    frame = counts.with_columns(
        pl.Series("patient_event_rate", rate, dtype=pl.Float64).fill_nan(None),
        pl.Series("patient_event_ci_low", low, dtype=pl.Float64).fill_nan(None),
        pl.Series("patient_event_ci_high", high, dtype=pl.Float64).fill_nan(None),
        suppressed=pl.lit(False),
    ).select(list(SAFETY_EVENTS_SCHEMA))
    frame = suppress_safety_events(frame, defs.min_cell_size)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {target}")
    common = {
        "definition_version": defs.definition_version,
        "run_id": run_id,
        "built_at": built_at.astimezone(UTC),
    }
    return _write_mart(con, target, "safety_events", frame, SAFETY_EVENTS_SCHEMA, common)


def _cell_counts(
    con: duckdb.DuckDBPyConnection, defs: OutcomeDefinitions, source: str
) -> pl.DataFrame:
    """Unsuppressed counts per cell x event type, every configured event type in every cell."""
    events = adverse_event_types()
    return con.sql(
        f"""
        WITH sessions AS ({_sessions_sql(defs, source)}), cells AS (
            SELECT indication, route, dose_band, count(*) AS n_sessions,
                   count(DISTINCT patient_id) AS n_patients
            FROM sessions GROUP BY indication, route, dose_band
        ), per_event AS (
            SELECT s.indication, s.route, s.dose_band, a.event, count(*) AS n_events,
                   count(DISTINCT a.patient_id) AS n_patients_with_event,
                   count(*) FILTER (WHERE a.serious) AS n_serious
            FROM {source}.{ATTRIBUTED_EVENTS_TABLE} a
            JOIN sessions s ON a.patient_id = s.patient_id AND a.session_day = s.day
                 AND a.session_number = s.session_number
            GROUP BY s.indication, s.route, s.dose_band, a.event
        ), event_types AS (SELECT unnest({_sql_list(events)}) AS event)
        SELECT c.indication, c.route, c.dose_band, t.event, c.n_sessions,
               coalesce(p.n_events, 0) AS n_events,
               100.0 * coalesce(p.n_events, 0) / c.n_sessions AS events_per_100_sessions,
               c.n_patients,
               coalesce(p.n_patients_with_event, 0) AS n_patients_with_event,
               coalesce(p.n_serious, 0) AS n_serious
        FROM cells c CROSS JOIN event_types t
        LEFT JOIN per_event p ON p.indication = c.indication AND p.route = c.route
             AND p.dose_band = c.dose_band AND p.event = t.event
        ORDER BY c.indication,
                 list_position({_sql_list(_routes())}, c.route) NULLS LAST, c.route,
                 list_position({_sql_list(_band_order(defs))}, c.dose_band),
                 list_position({_sql_list(events)}, t.event)
        """
    ).pl()


def unattributed_events(con: duckdb.DuckDBPyConnection, target_schema: str = "build",
                        source_schema: str = "derived") -> int:
    """Current adverse events (of this build: ``<source_schema>.current_adverse_events``) not
    in ``<target_schema>.safety_events`` (built just before): no administration on or before
    the event day, or no accepted patient row. Reported as Dagster metadata so that nothing
    is left out silently."""
    target = quote_identifier(target_schema)
    source = quote_identifier(source_schema)
    total = con.execute(f"SELECT count(*) FROM {source}.current_adverse_events").fetchall()[0]
    counted = con.execute(f"SELECT coalesce(sum(n_events), 0) FROM {target}.safety_events")
    return int(total[0] if total else 0) - int(counted.fetchall()[0][0])


# ---------------------------------------------------------------------------------------------
# Safety signals
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetySignal:
    """The recent vs earlier comparison of one adverse-event type (rates per 100 sessions)."""

    event: str
    recent_sessions: int
    recent_events: int
    earlier_sessions: int
    earlier_events: int
    recent_rate: float | None
    recent_ci_low: float | None
    recent_ci_high: float | None
    earlier_rate: float | None
    earlier_ci_low: float | None
    earlier_ci_high: float | None
    threshold_per_100_sessions: float
    alpha: float
    p_value: float | None
    """None when the test is not possible (no recent or no earlier sessions)."""
    exceeds_threshold: bool
    significant_rise: bool
    recent_since: datetime | None
    """Sessions first delivered at or after this time (UTC) are recent."""
    newest_export_at: datetime | None
    test: str = SIGNAL_TEST

    @property
    def fired(self) -> bool:
        return self.exceeds_threshold or self.significant_rise

    @property
    def summary(self) -> str:
        """One line for logs and ``make run``: both rates, why it fired (or did not)."""
        recent = _fmt_rate(self.recent_rate, self.recent_ci_low, self.recent_ci_high)
        earlier = _fmt_rate(self.earlier_rate, self.earlier_ci_low, self.earlier_ci_high)
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        reasons = []
        if self.exceeds_threshold:
            reasons.append(f"above threshold {self.threshold_per_100_sessions:g}")
        if self.significant_rise:
            reasons.append(f"significant rise (p = {p} < {self.alpha:g})")
        verdict = "; ".join(reasons) if reasons else f"no signal (p = {p})"
        return (
            f"{self.event}: recent {recent} ({self.recent_events}/{self.recent_sessions} "
            f"sessions) vs earlier {earlier} ({self.earlier_events}/{self.earlier_sessions}) "
            f"per 100 sessions; {verdict}"
        )


def _fmt_rate(rate: float | None, low: float | None, high: float | None) -> str:
    if rate is None:
        return "n/a"
    return f"{rate:.1f} [{low:.1f}-{high:.1f}]"


def poisson_rate_ci(
    events: np.ndarray, exposure: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Garwood 1936) two-sided CI of ``events / exposure``, vectorised; NaN where the
    exposure is 0. Equal to R ``poisson.test(k, T)$conf.int``: chi-square quantiles
    ``chi2(a/2; 2k) / 2`` (0 for k = 0) and ``chi2(1 - a/2; 2k + 2) / 2``, over T."""
    k = np.asarray(events, dtype=np.float64)
    t = np.asarray(exposure, dtype=np.float64)
    alpha = 1.0 - confidence
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(k > 0, stats.chi2.ppf(alpha / 2.0, 2.0 * k) / 2.0, 0.0) / t
        high = stats.chi2.ppf(1.0 - alpha / 2.0, 2.0 * k + 2.0) / 2.0 / t
    return np.where(t > 0, low, np.nan), np.where(t > 0, high, np.nan)


def safety_signals(
    con: duckdb.DuckDBPyConnection, defs: OutcomeDefinitions, source_schema: str = "derived"
) -> list[SafetySignal]:
    """One :class:`SafetySignal` per configured adverse-event type (contract order).

    Same scope as the mart, from the same tables (``build_safety_tables`` in
    ``source_schema``: monitored sessions, events attributed to the session they followed).
    The test conditions on the total events: under equal rates the recent events are
    Binomial(recent + earlier events, recent sessions / all sessions); the p-value is
    P(X >= recent events). With no recent or no earlier sessions there is no test (p NULL);
    the threshold still applies whenever there are recent sessions.
    """
    config = defs.safety_signals
    events = adverse_event_types()
    source = _safety_tables(con, source_schema)
    counts = con.sql(
        f"""
        WITH export_times AS (
            SELECT export_id,
                   coalesce(max(exported_at), max(validated_at)) AS delivered_at
            FROM ops.data_quality WHERE status = 'accepted' AND NOT blocked
            GROUP BY export_id
        ), bounds AS (
            SELECT max(delivered_at) AS newest,
                   max(delivered_at) - to_days(CAST($window AS INTEGER)) AS since
            FROM export_times
        ), first_delivery AS (
            SELECT t.patient_id, t.day, t.session_number, min(x.delivered_at) AS first_at
            FROM staging.treatments t JOIN export_times x USING (export_id)
            GROUP BY t.patient_id, t.day, t.session_number
        ), periods AS (
            SELECT s.patient_id, s.day, s.session_number,
                   coalesce(f.first_at >= b.since, false) AS recent
            FROM {source}.{SESSIONS_TABLE} s CROSS JOIN bounds b
            LEFT JOIN first_delivery f USING (patient_id, day, session_number)
        ), sessions AS (
            SELECT count(*) FILTER (WHERE recent) AS recent_sessions,
                   count(*) FILTER (WHERE NOT recent) AS earlier_sessions
            FROM periods
        ), per_event AS (
            SELECT a.event, count(*) FILTER (WHERE p.recent) AS recent_events,
                   count(*) FILTER (WHERE NOT p.recent) AS earlier_events
            FROM {source}.{ATTRIBUTED_EVENTS_TABLE} a
            JOIN periods p ON a.patient_id = p.patient_id AND a.session_day = p.day
                 AND a.session_number = p.session_number
            GROUP BY a.event
        ), event_types AS (
            SELECT unnest({_sql_list(events)}) AS event,
                   generate_subscripts({_sql_list(events)}, 1) AS event_order
        )
        SELECT t.event, s.recent_sessions, coalesce(e.recent_events, 0) AS recent_events,
               s.earlier_sessions, coalesce(e.earlier_events, 0) AS earlier_events,
               timezone('UTC', b.newest) AS newest, timezone('UTC', b.since) AS since
        FROM event_types t CROSS JOIN sessions s CROSS JOIN bounds b
        LEFT JOIN per_event e USING (event)
        ORDER BY t.event_order
        """,
        params={"window": config.recent_window_days},
    ).pl()
    k1 = counts["recent_events"].to_numpy().astype(np.int64)
    n1 = counts["recent_sessions"].to_numpy().astype(np.int64)
    k0 = counts["earlier_events"].to_numpy().astype(np.int64)
    n0 = counts["earlier_sessions"].to_numpy().astype(np.int64)
    rates: dict[str, np.ndarray] = {}
    for period, k, n in (("recent", k1, n1), ("earlier", k0, n0)):
        low, high = poisson_rate_ci(k, n, defs.confidence)
        with np.errstate(divide="ignore", invalid="ignore"):
            rates[f"{period}_rate"] = np.where(n > 0, 100.0 * k / np.maximum(n, 1), np.nan)
        rates[f"{period}_ci_low"] = 100.0 * low
        rates[f"{period}_ci_high"] = 100.0 * high
    testable = (n1 > 0) & (n0 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(testable, n1 / np.maximum(n1 + n0, 1), 0.5)
    p_values = np.where(testable, stats.binom.sf(k1 - 1, k1 + k0, share), np.nan)

    newest, since = counts["newest"], counts["since"]
    signals: list[SafetySignal] = []
    for i, event in enumerate(counts["event"].to_list()):
        threshold = config.thresholds_per_100_sessions[event]
        # exact: 100 k / n > threshold  <=>  100 k > threshold * n
        exceeds = bool(n1[i] > 0 and Decimal(100 * int(k1[i])) > threshold * int(n1[i]))
        p = _finite(p_values[i])
        signals.append(
            SafetySignal(
                event=event,
                recent_sessions=int(n1[i]),
                recent_events=int(k1[i]),
                earlier_sessions=int(n0[i]),
                earlier_events=int(k0[i]),
                **{name: _finite(values[i]) for name, values in rates.items()},
                threshold_per_100_sessions=float(threshold),
                alpha=config.alpha,
                p_value=p,
                exceeds_threshold=exceeds,
                significant_rise=p is not None and p < config.alpha,
                recent_since=_utc(since[i]),
                newest_export_at=_utc(newest[i]),
            )
        )
    return signals


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Terminal summary (make run)
# ---------------------------------------------------------------------------------------------


def summary_lines(
    con: duckdb.DuckDBPyConnection,
    fired: Sequence[str] = (),
    schema: str = "marts",
    top: int = 3,
) -> list[str]:
    """Events per 100 sessions of the ``top`` event types per indication (sums of published
    session and event counts over routes and dose bands, which suppression never withholds),
    then the fired signals (``fired``: one summary line each, from the check results)."""
    quoted = quote_identifier(schema)
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? "
        "AND table_name = 'safety_events'",
        [schema],
    ).fetchall()[0]
    rows = (
        con.execute(
            f"""
            SELECT indication, event, 100.0 * sum(n_events) / sum(n_sessions) AS per_100,
                   sum(n_events) AS n_events
            FROM {quoted}.safety_events GROUP BY indication, event
            QUALIFY row_number() OVER (PARTITION BY indication
                                       ORDER BY per_100 DESC, event) <= {int(top)}
            ORDER BY indication, per_100 DESC, event
            """
        ).fetchall()
        if exists and exists[0]
        else []
    )
    if not rows:
        return ["safety: no adverse events exported (marts.safety_events is empty)"]
    by_indication: dict[str, list[str]] = {}
    for indication, event, per_100, _ in rows:
        by_indication.setdefault(indication, []).append(f"{event} {per_100:.1f}")
    width = max(len(i) for i in by_indication)
    out = [f"safety: events per 100 sessions, top {top} per indication"]
    out += [f"  {ind.ljust(width)}  " + ", ".join(ev) for ind, ev in by_indication.items()]
    if fired:
        out.append(f"safety signals fired (WARN, {len(fired)}):")
        out += [f"  {line}" for line in fired]
    else:
        out.append("safety signals: none fired")
    return out
