"""Jobs, in their own module so that sensors and schedules can target them without importing
``pipelines.definitions`` (which imports the sensors: a cycle otherwise).

Executor: Dagster's default multiprocess executor (every step in its own process: memory of a
large validation is returned to the OS when the step ends, and a crashing step does not take
the run worker down). Two steps never touch DuckDB at once because every warehouse-writing
asset is in pool ``warehouse`` and the instance limits each pool to one slot (op granularity,
``pipelines/dagster.yaml``): the run worker claims the slot before it starts the step's
process, across runs and within one run. See docs/deployment.md "One writer at a time".

Run tag ``outcomes/warehouse=writer``: the run queue admits one such run at a time
(``concurrency.runs.tag_concurrency_limits``), so whole runs never interleave either.
"""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, multiprocess_executor

from assets.ingest import landing_exports
from assets.marts import analyst_marts
from assets.outcomes import patient_outcomes
from assets.reports import outcomes_report
from assets.safety import safety_signal_checks
from assets.validation import staged_export

WRITER_TAG_KEY = "outcomes/warehouse"
WRITER_TAG_VALUE = "writer"
WRITER_TAGS: dict[str, str] = {WRITER_TAG_KEY: WRITER_TAG_VALUE}

# forkserver: the run worker starts one server process that imports the code location once;
# every step process is forked from it (~0.1 s) instead of spawned and re-importing Dagster,
# polars, DuckDB and our assets (~3-6 s per step; the publish job has five steps). GX is
# imported inside the validating function, so the server holds no GX state or threads.
warehouse_executor = multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": ["pipelines.definitions"]}}},
    name="multiprocess_forkserver",
)

INGEST_JOB = "ingest_export_job"
DISCOVER_JOB = "discover_exports_job"
PUBLISH_JOB = "publish_marts_job"

ingest_export_job = define_asset_job(
    INGEST_JOB,
    selection=AssetSelection.assets(staged_export),
    description="Validate and stage one export (partition = export folder name).",
    tags=WRITER_TAGS,
    executor_def=warehouse_executor,
)
discover_exports_job = define_asset_job(
    DISCOVER_JOB,
    selection=AssetSelection.assets(landing_exports),
    description="Scan the landing directory; register complete exports as partitions.",
    tags=WRITER_TAGS,
    executor_def=warehouse_executor,
)
publish_marts_job = define_asset_job(
    PUBLISH_JOB,
    # AssetSelection.assets already takes the checks targeting the selected assets; named
    # explicitly so the safety signal checks (WARN) stay in this job whatever else changes.
    selection=AssetSelection.assets(landing_exports, patient_outcomes, analyst_marts,
                                    outcomes_report)
    | AssetSelection.checks(safety_signal_checks),
    description="Derive outcomes from everything staged, publish the analyst marts and run "
                "the safety signal checks.",
    tags=WRITER_TAGS,
    executor_def=warehouse_executor,
)
