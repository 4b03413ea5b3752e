"""Bringing the derived tables up to date: whole, or only for the patients that changed.

Everything in ``derived`` (``current_*``, ``patient_outcomes``, ``safety_sessions``,
``safety_attributed_events``) is a per-patient function of that patient's staged and
quarantined rows, the outcome definitions and the SQL of this version. So after a new export
only the patients it touched need deriving again: ingestion records every patient id of the
rows it stages or quarantines, and of the rows a re-delivery replaces
(``ops.touched_patients``, inside the export's transaction), and the next refresh deletes and
re-inserts exactly those patients' rows. At 1M patients a 1 % export re-derives ~1 % of the
patients instead of all of them (docs/performance.md).

A full derivation is done instead when there is nothing to update (first build), when the
definitions or this module's SQL changed (``derivation_version``: a hash of the generated
SQL), or when so many patients changed that a full pass is cheaper. The whole refresh is one
transaction: a crash leaves the previous derived state *and* the touched list, so the next
run does the same work again; nothing is half updated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import duckdb

import data_contracts
from ketamine_outcomes import derivation, safety, warehouse
from ketamine_outcomes.fault_injection import maybe_crash
from ketamine_outcomes.outcome_definitions import OutcomeDefinitions
from ketamine_outcomes.settings import full_rederive_share

SCOPE = "derive_scope"  # temp table of the patient ids re-derived by an incremental refresh
DERIVED_TABLES = ("patient_outcomes", safety.SESSIONS_TABLE, safety.ATTRIBUTED_EVENTS_TABLE,
                  *(f"current_{c.name}" for c in data_contracts.table_contracts()))


@dataclass(frozen=True)
class Refresh:
    """What a refresh did, for Dagster metadata and the run log."""

    mode: str  # "full" | "incremental"
    reason: str
    patients_rederived: int | None  # None for a full derivation


def derivation_version(defs: OutcomeDefinitions, schema: str = "derived") -> str:
    """A hash of every statement a derivation runs under ``defs``: a change of definitions or
    of the SQL (a new version of this software) forces a full derivation."""
    text = "\n".join([
        derivation.patient_outcomes_query(defs, schema),
        safety.safety_tables_sql(schema)[0],
        safety.safety_tables_sql(schema)[1],
        *(warehouse.current_rows_sql(c) for c in data_contracts.table_contracts()),
    ])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def refresh_derived(con: duckdb.DuckDBPyConnection, defs: OutcomeDefinitions,
                    schema: str = "derived", full_share: float | None = None) -> Refresh:
    """Bring ``<schema>`` up to date with staging, fully or incrementally (module docstring).
    ``full_share``: above this share of patients touched, derive everything (default
    ``OUTCOMES_FULL_REDERIVE_SHARE``, 0.25)."""
    full_share = full_rederive_share(full_share)
    version = derivation_version(defs, schema)
    con.execute("BEGIN TRANSACTION")
    try:
        mode, reason, scope_size = _plan(con, schema, version, full_share)
        if mode == "full":
            derivation.derive_patient_outcomes(con, defs, schema=schema)
            safety.build_safety_tables(con, schema=schema)
        else:
            _rederive_scope(con, defs, schema)
        con.execute("DELETE FROM ops.touched_patients")
        con.execute("DELETE FROM ops.derivation_state")
        con.execute("INSERT INTO ops.derivation_state VALUES (?, ?, current_timestamp)",
                    [schema, version])
        maybe_crash("derive.end")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.execute(f"DROP TABLE IF EXISTS {SCOPE}")
    return Refresh(mode, reason, scope_size if mode == "incremental" else None)


def _plan(con: duckdb.DuckDBPyConnection, schema: str, version: str,
          full_share: float) -> tuple[str, str, int]:
    """("full" | "incremental", why, patients in scope); fills the scope temp table."""
    state = con.execute("SELECT schema_name, derivation_version FROM ops.derivation_state"
                        ).fetchall()
    present = warehouse.table_names(con, schema)
    if not state:
        return "full", "first derivation", 0
    if state[0] != (schema, version):
        return "full", "outcome definitions or derivation SQL changed", 0
    if not set(DERIVED_TABLES) <= present:
        return "full", "derived tables missing", 0
    con.execute(f"CREATE OR REPLACE TEMP TABLE {SCOPE} AS "
                "SELECT DISTINCT patient_id FROM ops.touched_patients")
    scope = con.execute(f"SELECT count(*) FROM {SCOPE}").fetchall()[0][0]
    s = warehouse.quote_identifier(schema)
    derived = con.execute(f"SELECT count(*) FROM {s}.current_patients").fetchall()[0][0]
    if scope > full_share * max(derived, 1):
        return "full", f"{scope} of {derived} patients changed", scope
    return "incremental", f"{scope} patients changed", scope


def _rederive_scope(con: duckdb.DuckDBPyConnection, defs: OutcomeDefinitions,
                    schema: str) -> None:
    """Delete and re-insert the rows of the patients in the scope table, in every derived
    table, with the same SQL as a full derivation restricted to those patients."""
    s = warehouse.quote_identifier(schema)
    in_scope = f"patient_id IN (SELECT patient_id FROM {SCOPE})"
    for contract in data_contracts.table_contracts():
        con.execute(f"DELETE FROM {s}.current_{contract.name} WHERE {in_scope}")
        con.execute(f"INSERT INTO {s}.current_{contract.name} "
                    f"{warehouse.current_rows_sql(contract, where=in_scope)}")
    derivation.write_helper_tables(con, defs, s)
    maybe_crash("derive")
    con.execute(f"DELETE FROM {s}.patient_outcomes WHERE {in_scope}")
    con.execute(f"INSERT INTO {s}.patient_outcomes "
                f"{derivation.patient_outcomes_query(defs, s, scope=SCOPE)}")
    safety.build_safety_tables(con, schema=schema, scope=SCOPE)
