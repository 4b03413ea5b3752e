"""Sensors: a new or changed export folder becomes one ingest run; finished ingests become one
publish run.

Two sensors, not one, because the publish must start after the ingests it is meant to include
and pools do not order runs (they only keep two of them off the DuckDB file at the same time):

- ``landing_sensor`` watches the landing directory. A complete folder whose files have not
  changed for ``OUTCOMES_SENSOR_SETTLE_SECONDS`` (still being copied otherwise) and whose
  content hash it has not requested before is registered as a partition of ``exports`` and
  gets one ``ingest_export_job`` run, run key ``<export_id>:<content hash>`` (a re-delivery of
  identical bytes is a no-op even if the cursor is lost). Incomplete and refused folders are
  left alone (the next publish reports them in marts.data_quality).
- ``publish_after_ingest_sensor`` requests one ``publish_marts_job`` run once at least one
  ingest run has finished (success or failure: a blocked export must reach
  marts.data_quality) and no ingest run is queued or in progress. A burst of exports is
  published once, after its last ingest.

State lives in the sensor cursors (export id -> file signature and content hashes; the end
time of the last ingest run handled), never in DuckDB: a sensor that opened the warehouse
would be locked out whenever a run is writing it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import export_partitions
from ketamine_outcomes.discovery import ExportFolder, content_hash, discover_exports
from pipelines.jobs import INGEST_JOB, PUBLISH_JOB, ingest_export_job, publish_marts_job
from pipelines.resources import OutcomesWarehouse

INTERVAL_ENV = "OUTCOMES_SENSOR_INTERVAL_SECONDS"
SETTLE_ENV = "OUTCOMES_SENSOR_SETTLE_SECONDS"
DEFAULT_INTERVAL_SECONDS = 30
DEFAULT_SETTLE_SECONDS = 30

PENDING_STATUSES = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED,
                    DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
FINISHED_STATUSES = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE]


def _env_seconds(name: str, default: int) -> int:
    """A non-negative number of seconds from the environment (read when the code location
    loads, so a changed value needs a reload of the location)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {raw!r}")
    return value


def sensor_interval_seconds() -> int:
    """Minimum time between two ticks of each sensor (``OUTCOMES_SENSOR_INTERVAL_SECONDS``)."""
    return max(1, _env_seconds(INTERVAL_ENV, DEFAULT_INTERVAL_SECONDS))


def settle_seconds() -> int:
    """How long a folder's files must be unchanged before it is ingested: a folder copied file by
    file is complete (all required tables present) before its last file is fully written."""
    return _env_seconds(SETTLE_ENV, DEFAULT_SETTLE_SECONDS)


# -- landing sensor ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeenExport:
    """What the cursor remembers of one export folder."""

    signature: str  # names, sizes and mtimes of its files: cheap to compare every tick
    hashes: tuple[str, ...]  # content hashes requested so far, oldest first

    def to_json(self) -> dict[str, object]:
        return {"sig": self.signature, "hashes": list(self.hashes)}

    @staticmethod
    def from_json(data: dict[str, object]) -> SeenExport:
        hashes = data.get("hashes")
        return SeenExport(str(data.get("sig", "")),
                          tuple(str(h) for h in hashes) if isinstance(hashes, list) else ())


def load_landing_cursor(cursor: str | None) -> dict[str, SeenExport]:
    """Parse the landing sensor's cursor; an unreadable one starts afresh (run keys still
    prevent duplicate ingests of identical content)."""
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
        return {k: SeenExport.from_json(v) for k, v in data.items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def dump_landing_cursor(state: dict[str, SeenExport]) -> str:
    return json.dumps({k: v.to_json() for k, v in sorted(state.items())}, sort_keys=True,
                      separators=(",", ":"))


def export_files(export: ExportFolder) -> list[Path]:
    """Every file whose bytes make up the export (what ``content_hash`` reads)."""
    files = sorted(p for fs in export.table_files.values() for p in fs)
    manifest = export.manifest_path()
    if manifest.is_file():
        files.append(manifest)
    return files


def file_signature(files: list[Path]) -> tuple[str, float]:
    """(names, sizes and mtimes of ``files`` as one string, newest mtime in seconds)."""
    parts, newest = [], 0.0
    for p in files:
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
        newest = max(newest, st.st_mtime)
    return "|".join(parts), newest


def ingest_run_key(export_id: str, digest: str, seen_hashes: tuple[str, ...]) -> str:
    """``<export_id>:<hash>``; a content that comes back after a different one was ingested
    (A, B, then A again) gets a revision suffix, or Dagster would drop it as a duplicate key and
    the warehouse would keep B."""
    if digest in seen_hashes:
        return f"{export_id}:{digest}:rev{len(seen_hashes)}"
    return f"{export_id}:{digest}"


@dataclass
class LandingScan:
    """Outcome of one look at the landing directory."""

    requests: list[RunRequest]
    state: dict[str, SeenExport]
    settling: list[str]
    waiting: list[str]


def scan_landing(landing_dir: Path, previous: dict[str, SeenExport], now: float,
                 settle: float) -> LandingScan:
    """Decide which exports need an ingest run; pure apart from reading the landing directory
    (tested without Dagster's daemon)."""
    state: dict[str, SeenExport] = {}
    requests: list[RunRequest] = []
    settling: list[str] = []
    waiting: list[str] = []
    for export in discover_exports(landing_dir):
        if export.status != "complete":
            waiting.append(f"{export.export_id} ({export.status})")
            continue
        prev = previous.get(export.export_id)
        try:
            signature, newest = file_signature(export_files(export))
            if prev is not None and prev.signature == signature:
                state[export.export_id] = prev
                continue
            if now - newest < settle:
                settling.append(export.export_id)
                if prev is not None:
                    state[export.export_id] = prev
                continue
            digest = content_hash(export)
        except FileNotFoundError:  # a file vanished while we looked: next tick
            settling.append(export.export_id)
            if prev is not None:
                state[export.export_id] = prev
            continue
        hashes = prev.hashes if prev is not None else ()
        if hashes and hashes[-1] == digest:  # touched or re-copied, same bytes
            state[export.export_id] = SeenExport(signature, hashes)
            continue
        requests.append(RunRequest(
            run_key=ingest_run_key(export.export_id, digest, hashes),
            partition_key=export.export_id,
            tags={"outcomes/content_hash": digest[:16]},
        ))
        state[export.export_id] = SeenExport(signature, (*hashes, digest)[-20:])
    return LandingScan(requests, state, settling, waiting)


@sensor(
    name="landing_sensor",
    job=ingest_export_job,
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Watches the landing directory: each complete export folder that is new or whose content "
        "changed (and whose files have settled) is registered as an `exports` partition and "
        "gets one ingest_export_job run. Incomplete folders wait. Cursor: export id -> file "
        "signature and content hashes."
    ),
)
def landing_sensor(context: SensorEvaluationContext,
                   outcomes_warehouse: OutcomesWarehouse) -> SensorResult:
    paths = outcomes_warehouse.paths()
    scan = scan_landing(paths.landing_dir, load_landing_cursor(context.cursor), time.time(),
                        settle_seconds())
    cursor = dump_landing_cursor(scan.state)
    notes = []
    if scan.settling:
        notes.append(f"settling (files still changing): {', '.join(scan.settling)}")
    if scan.waiting:
        notes.append(f"not complete: {', '.join(scan.waiting)}")
    if not scan.requests:
        return SensorResult(skip_reason=SkipReason(
            "no new or changed complete export in " + str(paths.landing_dir)
            + ("; " + "; ".join(notes) if notes else "")), cursor=cursor)
    known = set(context.instance.get_dynamic_partitions(export_partitions.name))
    new_partitions = [r.partition_key for r in scan.requests
                      if r.partition_key and r.partition_key not in known]
    for note in notes:
        context.log.info(note)
    return SensorResult(
        run_requests=scan.requests,
        dynamic_partitions_requests=(
            [export_partitions.build_add_request(new_partitions)] if new_partitions else []),
        cursor=cursor,
    )


# -- publish after ingests -----------------------------------------------------------------------
@sensor(
    name="publish_after_ingest_sensor",
    job=publish_marts_job,
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Requests one publish_marts_job run after ingest runs have finished (succeeded or "
        "failed) and none is queued or running, so a publish never starts before the ingests "
        "it should include. Cursor: end time of the last ingest run handled."
    ),
)
def publish_after_ingest_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    instance = context.instance
    since = float(context.cursor) if context.cursor else 0.0
    # in-flight first: an ingest that finishes between the two queries is then seen as
    # finished, never as neither
    in_flight = instance.get_run_records(
        RunsFilter(job_name=INGEST_JOB, statuses=PENDING_STATUSES))
    finished = [
        r for r in instance.get_run_records(RunsFilter(
            job_name=INGEST_JOB, statuses=FINISHED_STATUSES,
            updated_after=datetime.fromtimestamp(since, UTC) if since else None))
        if r.end_time is not None and r.end_time > since
    ]
    if not finished:
        return SkipReason("no ingest run finished since the last publish request")
    if in_flight:
        return SkipReason(f"waiting for {len(in_flight)} ingest run(s) queued or in progress "
                          f"before publishing {len(finished)} finished one(s)")
    last = max(finished, key=lambda r: r.end_time or 0.0)
    cursor = repr(last.end_time)
    not_started = instance.get_run_records(
        RunsFilter(job_name=PUBLISH_JOB,
                   statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]), limit=1)
    if not_started:
        # a publish that has not started yet will read everything those ingests staged
        return SensorResult(skip_reason=SkipReason(
            f"publish run {not_started[0].dagster_run.run_id} is queued and will include "
            f"{len(finished)} finished ingest run(s)"), cursor=cursor)
    exports = sorted({r.dagster_run.tags.get("dagster/partition", "?") for r in finished})
    return SensorResult(
        run_requests=[RunRequest(
            run_key=f"publish-after-{last.dagster_run.run_id}",
            tags={"outcomes/after_ingest_runs": str(len(finished)),
                  "outcomes/exports": ",".join(exports)[:200]},
        )],
        cursor=cursor,
    )
