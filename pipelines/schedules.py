"""Daily rebuild of the analyst marts.

Why a schedule on top of the sensors: the sensors publish only when an export arrives, but the
marts also change without new data (a new outcome-definition version after a deploy, a folder
that became incomplete or was removed, the report's "built at"). A daily publish keeps the
analyst file and marts.data_quality current on quiet days. It goes through the same run queue
as everything else, so it waits for (never overlaps) an ingest in progress.

``OUTCOMES_REBUILD_CRON`` (default ``0 5 * * *``) and ``OUTCOMES_TIMEZONE`` (default ``UTC``,
an IANA name such as ``America/Chicago``) are read when the code location loads.
"""

from __future__ import annotations

import os
from zoneinfo import ZoneInfo

from dagster import DefaultScheduleStatus, ScheduleDefinition

from pipelines.jobs import publish_marts_job

CRON_ENV = "OUTCOMES_REBUILD_CRON"
TIMEZONE_ENV = "OUTCOMES_TIMEZONE"
DEFAULT_CRON = "0 5 * * *"
DEFAULT_TIMEZONE = "UTC"


def rebuild_cron() -> str:
    return os.environ.get(CRON_ENV, "").strip() or DEFAULT_CRON


def rebuild_timezone() -> str:
    """The schedule's timezone, checked here so that a typo fails the code location load with
    the variable's name instead of a daemon error at the first tick."""
    name = os.environ.get(TIMEZONE_ENV, "").strip() or DEFAULT_TIMEZONE
    try:
        ZoneInfo(name)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{TIMEZONE_ENV}={name!r} is not an IANA timezone name") from exc
    return name


daily_rebuild_schedule = ScheduleDefinition(
    name="daily_rebuild_schedule",
    job=publish_marts_job,
    cron_schedule=rebuild_cron(),
    execution_timezone=rebuild_timezone(),
    default_status=DefaultScheduleStatus.RUNNING,
    tags={"outcomes/trigger": "daily_rebuild"},
    description=(
        "Rebuilds and republishes every mart from everything staged, daily "
        f"(cron from {CRON_ENV}, timezone from {TIMEZONE_ENV})."
    ),
)
