"""The Dagster code location: assets by stage, jobs, resources (see docs/architecture.md)."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from assets.ingest import landing_exports
from assets.marts import analyst_marts
from assets.outcomes import patient_outcomes
from assets.reports import outcomes_report
from assets.validation import staged_export
from pipelines.resources import OutcomesWarehouse

ingest_export_job = define_asset_job(
    "ingest_export_job",
    selection=AssetSelection.assets(staged_export),
    description="Validate and stage one export (partition = export folder name).",
    executor_def=in_process_executor,
)
discover_exports_job = define_asset_job(
    "discover_exports_job",
    selection=AssetSelection.assets(landing_exports),
    description="Scan the landing directory; register complete exports as partitions.",
    executor_def=in_process_executor,
)
publish_marts_job = define_asset_job(
    "publish_marts_job",
    selection=AssetSelection.assets(landing_exports, patient_outcomes, analyst_marts,
                                    outcomes_report),
    description="Derive outcomes from everything staged and publish the analyst marts.",
    executor_def=in_process_executor,
)

defs = Definitions(
    assets=[landing_exports, staged_export, patient_outcomes, analyst_marts, outcomes_report],
    jobs=[ingest_export_job, discover_exports_job, publish_marts_job],
    resources={"outcomes_warehouse": OutcomesWarehouse()},
)
