"""The internal DuckDB warehouse: staging, quarantine, row accounting, supersession.

Schemas (none of them analyst-facing; the published file holds only ``marts``):
- ``staging.<table>``: accepted rows of every ingested export, typed, with export_id and
  source_row; ``staging.current_<table>``: natural-key supersession over all of them (the
  row of the export that sorts last by name wins; rows a later export does not repeat stay).
- ``derived.current_<table>``: the same supersession materialised once per build
  (``materialise_current``, in the ``patient_outcomes`` step). A view is recomputed at every
  reference, and the derivation and the safety tables refer to the current assessments and
  treatments many times (7 scans and re-aggregations of ``staging.assessments`` per build,
  docs/performance.md); build consumers read these tables, analysts and tests the views.
- ``ops.quarantined_rows``: export, table, source row and the rule(s) broken (no values).
- ``ops.data_quality``: the row accounting, one row per export and table.
- ``ops.exports``: which export content (hash) was ingested.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import polars as pl

import data_contracts
from data_contracts import TableContract
from ketamine_outcomes.settings import duckdb_memory_limit

SQL_TYPES = {"string": "VARCHAR", "integer": "BIGINT", "float": "DOUBLE", "boolean": "BOOLEAN"}


def score_decimal_type() -> str:
    decimals = max(int(i["decimals"]) for i in data_contracts.vocabulary()["instruments"].values())
    return f"DECIMAL(18, {decimals})"


def _sql_type(col_type: str) -> str:
    return score_decimal_type() if col_type == "decimal" else SQL_TYPES[col_type]


def connect(path: Path, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the internal warehouse with every table in place.

    DuckDB is capped at ``memory_limit`` (default: ``OUTCOMES_DUCKDB_MEMORY_LIMIT``, else 3GB;
    DuckDB's own default is 80 % of RAM) and spills what does not fit to
    ``<file>.tmp`` beside the warehouse (named explicitly, so spilling never depends on the
    working directory; DuckDB removes it when the last connection closes). The published
    analyst file is written through this same connection (``publish.py`` ATTACHes it), so the
    cap covers it too. ``preserve_insertion_order`` stays on: not every statement writing a
    table here has an ORDER BY (staging keeps the order ingestion wrote, and re-runs are
    compared row for row), and the cap already bounds the memory it would save.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        configure(con, path, memory_limit)
        ensure_schema(con)
    except BaseException:
        con.close()
        raise
    return con


def configure(con: duckdb.DuckDBPyConnection, path: Path,
              memory_limit: str | None = None) -> None:
    """Memory cap and spill directory of a warehouse connection (see ``connect``)."""
    limit = duckdb_memory_limit(memory_limit)
    try:
        con.execute(f"SET memory_limit = {_sql_string(limit)}")
    except duckdb.Error as exc:
        raise ValueError(
            f"invalid DuckDB memory limit {limit!r} (OUTCOMES_DUCKDB_MEMORY_LIMIT): {exc}"
        ) from exc
    spill = str(path) + ".tmp"
    # DuckDB refuses to switch a spill directory in use (another connection of this process to
    # the same file may be spilling); the same directory needs no SET
    current = con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]
    if current != spill:
        con.execute(f"SET temp_directory = {_sql_string(spill)}")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_identifier(name: str) -> str:
    """Validate a schema name (it is interpolated into SQL) and return it quoted."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"invalid schema name {name!r}")
    return f'"{name}"'


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Idempotent DDL for staging, ops and the supersession views."""
    con.execute("CREATE SCHEMA IF NOT EXISTS staging")
    con.execute("CREATE SCHEMA IF NOT EXISTS ops")
    for contract in data_contracts.table_contracts():
        cols = ", ".join(f"{c.name} {_sql_type(c.type)}" for c in contract.columns)
        con.execute(
            f"CREATE TABLE IF NOT EXISTS staging.{contract.name} "
            f"(export_id VARCHAR NOT NULL, source_row BIGINT NOT NULL, {cols})"
        )
        con.execute(current_view_sql(contract))
    con.execute(
        """CREATE TABLE IF NOT EXISTS ops.quarantined_rows (
            export_id VARCHAR NOT NULL, table_name VARCHAR NOT NULL, source_row BIGINT NOT NULL,
            rules VARCHAR NOT NULL, patient_id VARCHAR, indication VARCHAR)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS ops.data_quality (
            export_id VARCHAR NOT NULL, status VARCHAR NOT NULL, table_name VARCHAR,
            file_name VARCHAR, rows_read BIGINT, rows_accepted BIGINT, rows_quarantined BIGINT,
            rows_duplicate BIGINT, blocked BOOLEAN NOT NULL, blocking_reason VARCHAR,
            exported_at TIMESTAMPTZ, validated_at TIMESTAMPTZ NOT NULL)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS ops.exports (
            export_id VARCHAR PRIMARY KEY, content_hash VARCHAR NOT NULL, status VARCHAR NOT NULL,
            ingested_at TIMESTAMPTZ NOT NULL)"""
    )
    # patients whose rows changed since the last derivation (rederive.py), and its version
    con.execute("CREATE TABLE IF NOT EXISTS ops.touched_patients (patient_id VARCHAR NOT NULL)")
    con.execute(
        """CREATE TABLE IF NOT EXISTS ops.derivation_state (
            schema_name VARCHAR NOT NULL, derivation_version VARCHAR NOT NULL,
            derived_at TIMESTAMPTZ NOT NULL)"""
    )
    con.execute(
        """CREATE OR REPLACE VIEW staging.quarantined_patients AS
           SELECT DISTINCT q.patient_id, q.indication
           FROM ops.quarantined_rows q
           WHERE q.table_name = 'patients' AND q.patient_id IS NOT NULL
             AND q.patient_id NOT IN (SELECT patient_id FROM staging.current_patients)"""
    )


def current_rows_sql(contract: TableContract, where: str = "") -> str:
    """Natural-key supersession: the accepted row of the last export (by name) wins.

    The one place supersession is written: the ``staging.current_<table>`` views and the
    incremental refresh of ``derived.current_<table>`` (``where``: a filter on the staged rows
    that keeps whole natural keys, e.g. a set of patient ids) both use it."""
    cols = ", ".join(contract.column_names)
    key = ", ".join(contract.natural_key)
    return (
        f"SELECT {cols} FROM staging.{contract.name} "
        + (f"WHERE {where} " if where else "")
        + f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY export_id DESC) = 1"
    )


def current_view_sql(contract: TableContract) -> str:
    """``staging.current_<table>``: the current rows of the table (``current_rows_sql``)."""
    return f"CREATE OR REPLACE VIEW staging.current_{contract.name} AS {current_rows_sql(contract)}"


def materialise_current(con: duckdb.DuckDBPyConnection, schema: str = "derived") -> None:
    """``<schema>.current_<table>`` for every table: ``staging.current_<table>`` evaluated once.

    Copied from the views rather than from a second copy of their SQL, so supersession has
    one definition, and whatever stands behind ``staging.current_<table>`` (the views, or
    tables a test writes as the staging interface) is what the build reads. Each table is
    replaced in one statement (``CREATE OR REPLACE TABLE ... AS``): a crash leaves either
    the previous build's table or the new one, never half of one, and the next build
    replaces every table again. ``schema`` is interpolated: a plain identifier only.
    """
    s = quote_identifier(schema)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
    for contract in data_contracts.table_contracts():
        con.execute(f"CREATE OR REPLACE TABLE {s}.current_{contract.name} AS "
                    f"SELECT * FROM staging.current_{contract.name}")


# fetchall, not fetchone: on duckdb 2.0 a fetchone() that returned a row leaves the result
# unfinished, and the connection then refuses relational work (con.sql: ResourceInUseException).
def ingested_hash(con: duckdb.DuckDBPyConnection, export_id: str) -> str | None:
    rows = con.execute("SELECT content_hash FROM ops.exports WHERE export_id = ?",
                       [export_id]).fetchall()
    return rows[0][0] if rows else None


def ingested_status(con: duckdb.DuckDBPyConnection, export_id: str) -> str | None:
    rows = con.execute("SELECT status FROM ops.exports WHERE export_id = ?",
                       [export_id]).fetchall()
    return rows[0][0] if rows else None


def ingested_at(con: duckdb.DuckDBPyConnection, export_id: str):
    rows = con.execute("SELECT ingested_at FROM ops.exports WHERE export_id = ?",
                       [export_id]).fetchall()
    return rows[0][0] if rows else None


def stored_outcome(con: duckdb.DuckDBPyConnection, export_id: str) -> dict[str, dict]:
    """What an earlier ingestion of ``export_id`` recorded, per table: row counts and
    quarantined rows per rule (for reporting an unchanged export that is not read again)."""
    out: dict[str, dict] = {}
    for table, read, accepted, quarantined, duplicate in con.execute(
            "SELECT table_name, rows_read, rows_accepted, rows_quarantined, rows_duplicate "
            "FROM ops.data_quality WHERE export_id = ? AND table_name IS NOT NULL",
            [export_id]).fetchall():
        out[table] = {"rows_read": read, "rows_accepted": accepted,
                      "rows_quarantined": quarantined, "rows_duplicate": duplicate,
                      "quarantined_per_rule": {}}
    for table, rule, n in con.execute(
            "SELECT table_name, rule, count(*) FROM (SELECT table_name, "
            "unnest(string_split(rules, ',')) AS rule FROM ops.quarantined_rows "
            "WHERE export_id = ?) GROUP BY ALL ORDER BY ALL", [export_id]).fetchall():
        out[table]["quarantined_per_rule"][rule] = n
    return out


def known_patient_ids(con: duckdb.DuckDBPyConnection, before_export: str) -> pl.Series:
    """Patients accepted in exports that sort before ``before_export``."""
    return con.sql(
        "SELECT DISTINCT patient_id FROM staging.patients WHERE export_id < $before",
        params={"before": before_export},
    ).pl()["patient_id"]


def table_names(con: duckdb.DuckDBPyConnection, schema: str) -> set[str]:
    """Tables of ``schema`` in the connection's own database (not ATTACHed ones)."""
    return {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = ?", [schema]).fetchall()}


def record_touched(con: duckdb.DuckDBPyConnection, export_id: str) -> None:
    """Every patient id of the export's staged and quarantined rows goes to
    ``ops.touched_patients``: their derived rows are re-derived by the next refresh. Before
    the first derivation there is nothing to update (it derives everything): nothing to
    record, which keeps a first build of many exports from paying for it."""
    if not con.execute("SELECT count(*) FROM ops.derivation_state").fetchall()[0][0]:
        return
    parts = [f"SELECT patient_id FROM staging.{c.name} WHERE export_id = $export"
             for c in data_contracts.table_contracts()]
    parts.append("SELECT patient_id FROM ops.quarantined_rows WHERE export_id = $export "
                 "AND patient_id IS NOT NULL")
    con.execute(f"INSERT INTO ops.touched_patients SELECT DISTINCT patient_id FROM "
                f"({' UNION ALL '.join(parts)})", {"export": export_id})


def forget_export(con: duckdb.DuckDBPyConnection, export_id: str) -> None:
    """Remove everything an earlier ingestion of this export wrote (re-delivery, changed);
    its patients are recorded as touched first, since their current rows may change."""
    record_touched(con, export_id)
    for contract in data_contracts.table_contracts():
        con.execute(f"DELETE FROM staging.{contract.name} WHERE export_id = ?", [export_id])
    con.execute("DELETE FROM ops.quarantined_rows WHERE export_id = ?", [export_id])
    con.execute("DELETE FROM ops.data_quality WHERE export_id = ?", [export_id])
    con.execute("DELETE FROM ops.exports WHERE export_id = ?", [export_id])


def record_waiting(con: duckdb.DuckDBPyConnection, export_id: str, status: str, reason: str,
                   validated_at) -> None:
    """One row for an incomplete or refused folder. It is kept as first written while status and
    reason stay the same (``validated_at``: when the folder was first seen so, and a re-run
    changes nothing), and replaced when they change."""
    if con.execute("SELECT status, blocking_reason FROM ops.data_quality WHERE export_id = ? "
                   "AND status IN ('incomplete', 'refused')", [export_id]).fetchall() == [
                       (status, reason)]:
        return
    con.execute("DELETE FROM ops.data_quality WHERE export_id = ? AND status IN "
                "('incomplete', 'refused')", [export_id])
    con.execute(
        "INSERT INTO ops.data_quality VALUES (?, ?, NULL, NULL, NULL, NULL, NULL, NULL, false, ?, "
        "NULL, ?)",
        [export_id, status, reason, validated_at],
    )


def forget_waiting_not_present(con: duckdb.DuckDBPyConnection, present_ids: list[str]) -> None:
    """An incomplete/refused folder that disappeared from the landing dir is no longer waiting."""
    con.execute(
        "DELETE FROM ops.data_quality WHERE status IN ('incomplete', 'refused') "
        "AND NOT list_contains(?, export_id)",
        [present_ids],
    )
