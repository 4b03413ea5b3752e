"""The Dagster code location: assets by stage, jobs, sensors, the daily schedule, resources
(see docs/architecture.md; operations in docs/deployment.md)."""

from __future__ import annotations

from dagster import Definitions

from assets.ingest import landing_exports
from assets.marts import analyst_marts
from assets.outcomes import patient_outcomes
from assets.reports import outcomes_report
from assets.safety import safety_signal_checks
from assets.validation import staged_export
from pipelines.jobs import discover_exports_job, ingest_export_job, publish_marts_job
from pipelines.resources import OutcomesWarehouse
from pipelines.schedules import daily_rebuild_schedule
from pipelines.sensors import landing_sensor, publish_after_ingest_sensor

__all__ = ["defs", "discover_exports_job", "ingest_export_job", "publish_marts_job"]

defs = Definitions(
    assets=[landing_exports, staged_export, patient_outcomes, analyst_marts, outcomes_report],
    asset_checks=[safety_signal_checks],
    jobs=[ingest_export_job, discover_exports_job, publish_marts_job],
    sensors=[landing_sensor, publish_after_ingest_sensor],
    schedules=[daily_rebuild_schedule],
    resources={"outcomes_warehouse": OutcomesWarehouse()},
)
