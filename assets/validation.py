"""Stage ``validation``: one export, read, validated with Great Expectations and staged.

One multi-asset per export partition produces the four staged tables together, because an
export is accepted or blocked as a whole. Per table, three asset checks:
``file_rules`` and ``deidentification`` (ERROR, blocking) and ``quarantined_rows`` (WARN).
A blocked export stages nothing (downstream marts are gated through the data, so a later
scheduled run cannot publish it either).
"""


from collections.abc import Iterator
from datetime import UTC, datetime

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

import data_contracts
from assets.partitions import export_partitions
from ketamine_outcomes import warehouse
from ketamine_outcomes.discovery import discover_exports
from ketamine_outcomes.ingest import ExportResult, ingest_export
from pipelines.resources import OutcomesWarehouse

DEID_RULES = {"identifier_column_name", "age_over_89"} | set(
    data_contracts.deidentification()["identifier_value_patterns"]
)
STAGED_TABLES = [c.name for c in data_contracts.table_contracts()]


def staged_key(table: str) -> AssetKey:
    return AssetKey(["staging", table])


def _check_specs(table: str) -> list[AssetCheckSpec]:
    key = staged_key(table)
    return [
        AssetCheckSpec("file_rules", asset=key, blocking=True,
                       description="File-level rules of exports.md (readable, UTF-8, fields per "
                                   "line, required columns, column types, manifest counts, one "
                                   "file per table). A failure blocks the whole export."),
        AssetCheckSpec("deidentification", asset=key, blocking=True,
                       description="No identifier-like column names or values (e-mail, SSN, "
                                   "phone, calendar date) and no age over 89 other than 90+. "
                                   "A failure refuses the whole export."),
        AssetCheckSpec("quarantined_rows", asset=key, blocking=False,
                       description="Rows that broke a row rule or a natural-key conflict were "
                                   "quarantined; counts per rule."),
    ]


@multi_asset(
    specs=[
        AssetSpec(
            staged_key(t),
            group_name="validation",
            deps=["landing_exports"],
            owners=["team:data-engineering"],
            tags={"stage": "validation"},
            description=(
                f"Accepted rows of the `{t}` table of every export (internal warehouse, schema "
                f"staging), validated with Great Expectations suites generated from "
                f"data_contracts/{t}.yaml; superseded by natural key in staging.current_{t}."
            ),
        )
        for t in STAGED_TABLES
    ],
    check_specs=[spec for t in STAGED_TABLES for spec in _check_specs(t)],
    partitions_def=export_partitions,
    pool="warehouse",
)
def staged_export(context: AssetExecutionContext,
                  outcomes_warehouse: OutcomesWarehouse) -> Iterator:
    """Validate and stage the export named by the partition key."""
    export_id = context.partition_key
    paths = outcomes_warehouse.paths()
    export = next((e for e in discover_exports(paths.landing_dir) if e.export_id == export_id),
                  None)
    if export is None or export.status != "complete":
        raise RuntimeError(
            f"export {export_id} is not a complete folder in {paths.landing_dir} any more"
        )
    stored = None
    with outcomes_warehouse.internal() as con:
        result = ingest_export(con, export, paths.data_docs_dir, datetime.now(UTC))
        if result.status == "unchanged":  # report what its ingestion recorded
            stored = warehouse.stored_outcome(con, export_id)
            docs = paths.data_docs_dir / export_id / "index.html"
            result.data_docs = docs if docs.is_file() else None
    for line in result.warnings:
        context.log.warning(line)
    if result.blocked:
        for fault in result.faults:
            context.log.error(f"BLOCKED {fault.message}")
    elif result.status == "unchanged":
        context.log.info(f"export {export_id}: content unchanged since it was ingested; skipped")
    yield from _results(result, stored)


def _results(result: ExportResult, stored: dict[str, dict] | None = None) -> Iterator:
    """Materializations and check results; ``stored`` (an unchanged export, not read again)
    gives the counts its ingestion recorded."""
    docs = str(result.data_docs) if result.data_docs else ""
    for table in STAGED_TABLES:
        key = staged_key(table)
        tv = result.table(table)
        if stored is not None:
            yield from _stored_results(key, result, stored.get(table), docs)
            continue
        file_faults = [f for f in result.faults if f.rule not in DEID_RULES
                       and (f.file is None or table in f.file or f.file == "manifest.json")]
        deid_faults = [f for f in result.faults if f.rule in DEID_RULES
                       and f.file and f.file.startswith(table + ".")]
        meta = {
            "status": result.status,
            "rows_read": result.rows_read.get(table) if result.rows_read else None,
            "rows_accepted": tv.rows_accepted if tv else 0,
            "rows_quarantined": tv.rows_quarantined if tv else 0,
            "rows_duplicate": tv.rows_duplicate if tv else 0,
            "expectations_evaluated": result.expectations_evaluated,
            "expectations_failed": result.expectations_failed,
            "data_docs": MetadataValue.path(docs),
            "seconds": round(result.seconds, 3),
            # where the export's ingestion spent its time (for the engineer on call)
            "seconds_by_stage": MetadataValue.json(
                {k: round(v, 3) for k, v in result.timings.items()}),
        }
        yield MaterializeResult(asset_key=key, metadata=meta)
        yield AssetCheckResult(
            asset_key=key, check_name="file_rules", passed=not file_faults,
            severity=AssetCheckSeverity.ERROR,
            metadata={"faults": MetadataValue.md(
                "\n".join(f"- {f.message}" for f in file_faults) or "none"),
                "data_docs": MetadataValue.path(docs)},
        )
        yield AssetCheckResult(
            asset_key=key, check_name="deidentification", passed=not deid_faults,
            severity=AssetCheckSeverity.ERROR,
            metadata={"faults": MetadataValue.md(
                "\n".join(f"- {f.message}" for f in deid_faults) or "none")},
        )
        counts = {k: v for k, v in (tv.rule_counts if tv else {}).items() if v}
        yield AssetCheckResult(
            asset_key=key, check_name="quarantined_rows", passed=not counts,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "rows_quarantined": tv.rows_quarantined if tv else 0,
                "rules_evaluated": len(tv.rules_evaluated) if tv else 0,
                "quarantined_per_rule": MetadataValue.json(counts),
                "data_docs": MetadataValue.path(docs),
            },
        )


def _stored_results(key: AssetKey, result: ExportResult, stored: dict | None,
                    docs: str) -> Iterator:
    """An unchanged accepted export: the file and de-identification rules passed when it was
    ingested; its quarantine is reported as recorded then."""
    stored = stored or {"rows_read": None, "rows_accepted": 0, "rows_quarantined": 0,
                        "rows_duplicate": 0, "quarantined_per_rule": {}}
    counts = stored["quarantined_per_rule"]
    yield MaterializeResult(asset_key=key, metadata={
        "status": result.status,
        **{k: stored[k] for k in ("rows_read", "rows_accepted", "rows_quarantined",
                                  "rows_duplicate")},
        "data_docs": MetadataValue.path(docs),
        "seconds": round(result.seconds, 3),
    })
    for check in ("file_rules", "deidentification"):
        yield AssetCheckResult(asset_key=key, check_name=check, passed=True,
                               severity=AssetCheckSeverity.ERROR,
                               metadata={"faults": MetadataValue.md("none")})
    yield AssetCheckResult(
        asset_key=key, check_name="quarantined_rows", passed=not counts,
        severity=AssetCheckSeverity.WARN,
        metadata={"rows_quarantined": stored["rows_quarantined"],
                  "quarantined_per_rule": MetadataValue.json(counts),
                  "data_docs": MetadataValue.path(docs)},
    )
