"""Stage ``ingest``: what is waiting in the landing directory."""


from datetime import UTC, datetime

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.partitions import export_partitions
from ketamine_outcomes import warehouse
from ketamine_outcomes.discovery import discover_exports
from pipelines.resources import OutcomesWarehouse


def _markdown_table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| export | status | note |", "|---|---|---|"]
    lines += [f"| {e} | {s} | {n} |" for e, s, n in rows]
    return "\n".join(lines)


@asset(
    group_name="ingest",
    owners=["team:data-engineering"],
    tags={"stage": "ingest"},
    pool="warehouse",
    description=(
        "Export folders found in the landing directory. Complete folders are registered as "
        "partitions of the staged tables (applied in folder-name order); incomplete folders "
        "are reported and wait; folders with an invalid export id are refused. Writes the "
        "incomplete/refused rows of marts.data_quality."
    ),
)
def landing_exports(context: AssetExecutionContext,
                    outcomes_warehouse: OutcomesWarehouse) -> MaterializeResult:
    paths = outcomes_warehouse.paths()
    found = discover_exports(paths.landing_dir)
    now = datetime.now(UTC)
    with outcomes_warehouse.internal() as con:
        for export in found:
            if export.status in ("incomplete", "refused"):
                warehouse.record_waiting(con, export.export_id, export.status,
                                         export.reason or "", now)
                context.log.warning(f"export {export.export_id}: {export.status} — {export.reason}")
        # a folder that is complete now is no longer waiting (its stale incomplete row goes)
        warehouse.forget_waiting_not_present(
            con, [e.export_id for e in found if e.status != "complete"])
    complete = [e.export_id for e in found if e.status == "complete"]
    new = [e for e in complete if not context.instance.has_dynamic_partition(
        export_partitions.name, e)]
    if new:
        context.instance.add_dynamic_partitions(export_partitions.name, new)
    return MaterializeResult(metadata={
        "landing_dir": MetadataValue.path(str(paths.landing_dir)),
        "complete": len(complete),
        "incomplete": sum(e.status == "incomplete" for e in found),
        "refused": sum(e.status == "refused" for e in found),
        "newly_registered": len(new),
        "exports": MetadataValue.md(_markdown_table(
            [(e.export_id, e.status, e.reason or "") for e in found])),
    })
