"""Publishing the analyst file atomically.

Marts are built in the internal warehouse (schema ``build``), then copied into a brand-new
DuckDB file that is checkpointed, closed, fsynced and moved onto the published path with
``os.replace``. An analyst's open read-only session keeps the snapshot it opened (the old
inode) and never blocks the run; a new session sees the complete new set, all from one run.
A run that fails before the rename leaves the previous file untouched.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import duckdb
import yaml

from ketamine_outcomes.fault_injection import maybe_crash

CATALOG = Path(__file__).with_name("mart_catalog.yaml")


def mart_catalog() -> dict:
    """Table and column descriptions for ``COMMENT ON`` (one source: mart_catalog.yaml)."""
    with open(CATALOG, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def build_data_quality(con: duckdb.DuckDBPyConnection, run_id: str, built_at: datetime,
                       definition_version: str, schema: str = "build") -> int:
    """``marts.data_quality`` from the accounting (operational counts, no patient attribute)."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    con.execute(
        f"""CREATE OR REPLACE TABLE {schema}.data_quality AS
        SELECT export_id, status, table_name, rows_read, rows_accepted, rows_quarantined,
               rows_duplicate, blocked, blocking_reason, exported_at, validated_at, file_name,
               ? AS definition_version, ? AS run_id, ?::TIMESTAMPTZ AS built_at
        FROM ops.data_quality
        ORDER BY export_id, table_name NULLS FIRST, file_name""",
        [definition_version, run_id, built_at],
    )
    return con.execute(f"SELECT count(*) FROM {schema}.data_quality").fetchall()[0][0]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def publish_marts(con: duckdb.DuckDBPyConnection, tables: list[str], target: Path,
                  source_schema: str = "build") -> Path:
    """Copy ``source_schema.<table>`` for every table into a new file and swap it in."""
    catalog = mart_catalog()
    common = catalog.get("common_columns", {})
    target.parent.mkdir(parents=True, exist_ok=True)
    staging_file = target.with_name(f".{target.name}.publishing-{os.getpid()}")
    temp_files = (staging_file, Path(str(staging_file) + ".wal"))
    _remove_stale_publishing_files(target)
    for leftover in temp_files:
        leftover.unlink(missing_ok=True)
    try:
        _write_new_file(con, tables, staging_file, source_schema, catalog, common)
    except BaseException:  # e.g. disk full: the previous file stays, no temp file is left
        for leftover in temp_files:
            leftover.unlink(missing_ok=True)
        raise
    maybe_crash("publish.before_replace")
    os.replace(staging_file, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def _write_new_file(con: duckdb.DuckDBPyConnection, tables: list[str], staging_file: Path,
                    source_schema: str, catalog: dict, common: dict) -> None:
    con.execute(f"ATTACH {_quote(str(staging_file))} AS publishing")
    try:
        con.execute("CREATE SCHEMA publishing.marts")
        for table in tables:
            con.execute(f"CREATE TABLE publishing.marts.{table} AS "
                        f"SELECT * FROM {source_schema}.{table}")
            maybe_crash("publish.write")
            entry = catalog["marts"].get(table, {})
            if entry.get("description"):
                con.execute(f"COMMENT ON TABLE publishing.marts.{table} IS "
                            f"{_quote(entry['description'])}")
            columns = [r[0] for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = 'publishing' "
                "AND schema_name = 'marts' AND table_name = ?", [table]).fetchall()]
            for column in columns:
                text = entry.get("columns", {}).get(column) or common.get(column)
                if text:
                    con.execute(f"COMMENT ON COLUMN publishing.marts.{table}.{column} IS "
                                f"{_quote(text)}")
        con.execute("CHECKPOINT publishing")
    finally:
        con.execute("DETACH publishing")
    with open(staging_file, "rb") as fh:
        os.fsync(fh.fileno())


def _remove_stale_publishing_files(target: Path) -> None:
    """Temp files of earlier publishes whose process is gone (killed before the rename: they
    would pile up, one full set of marts each). Names end in ``-<pid>`` or ``-<pid>.wal``; the
    pid is checked on this host, so a warehouse directory must not be published to from two
    hosts at once (DuckDB's file locks do not hold across hosts either)."""
    for path in target.parent.glob(f".{target.name}.publishing-*"):
        pid = path.name.rsplit("-", 1)[1].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
