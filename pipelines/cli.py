"""Headless run of the whole pipeline (``make run``), through the same Dagster jobs as the UI.

Exit status: 0 when every complete export was ingested (incomplete folders are reported and
wait); 2 when some export was blocked or refused (the others are still processed and
published); 1 when the pipeline itself failed.

An export whose content was already ingested and accepted gets no ingest run (see
``_skippable``); new, changed and blocked exports get one each, and the publish always runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BLOCKED = 0, 1, 2


def _prepare_landing(args: argparse.Namespace) -> Path | None:
    """Bundled sample exports when no landing directory is configured."""
    if os.environ.get("OUTCOMES_LANDING_DIR"):
        return None
    from ketamine_outcomes.sample_exports import generate_landing
    from ketamine_outcomes.settings import resolve_paths

    sample = resolve_paths().data_dir / "sample_landing"
    if sample.exists():
        shutil.rmtree(sample)
    generate_landing(sample, n_patients=args.sample_patients, seed=args.seed)
    os.environ["OUTCOMES_LANDING_DIR"] = str(sample)
    return sample


def _instance():
    from dagster import DagsterInstance

    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            shutil.copy(Path(__file__).with_name("dagster.yaml"), config)
        return DagsterInstance.get()
    return DagsterInstance.ephemeral()


CLI_PID_TAG = "outcomes/cli_pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release_runs_of_dead_cli_processes(instance) -> None:
    """A `make run` killed mid-run (SIGKILL, power loss) leaves its in-process run STARTED
    and its ``warehouse`` pool slot claimed; the daemon's run monitoring does not watch
    in-process runs, so the next `make run` would wait for that slot for ever. Runs started by
    a CLI process that no longer exists are marked failed and their slots freed."""
    from dagster import DagsterRunStatus, RunsFilter

    active = instance.get_runs(RunsFilter(statuses=[
        DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.NOT_STARTED]))
    for dagster_run in active:
        pid = dagster_run.tags.get(CLI_PID_TAG)
        if pid is None or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        instance.report_run_failed(
            dagster_run, message=f"the CLI process {pid} that ran it no longer exists")
        instance.event_log_storage.free_concurrency_slots_for_run(dagster_run.run_id)
        print(f"released run {dagster_run.run_id} of a CLI process that was killed",
              file=sys.stderr)


def _was_blocked(paths, export_id: str) -> bool:
    """True when the export's last validation blocked it (ops.exports, internal warehouse)."""
    import duckdb

    if not paths.internal_warehouse.exists():
        return False
    con = duckdb.connect(str(paths.internal_warehouse), read_only=True)
    try:
        rows = con.execute("SELECT status FROM ops.exports WHERE export_id = ?",
                           [export_id]).fetchall()
    finally:
        con.close()
    return bool(rows) and rows[0][0] == "blocked"


# How long the CLI waits for another process's lock on the internal warehouse before it gives
# up skipping (every complete export then gets its run, as if nothing had been ingested).
SKIP_READ_TIMEOUT_SECONDS = 10.0


def _accepted_exports(paths) -> dict[str, tuple[str, str]]:
    """export_id -> (content hash, when it was validated) of every export whose last ingestion
    was accepted (``ops.exports``, internal warehouse), read through a short read-only session.

    Empty when the warehouse does not exist yet or cannot be read (another process holds it
    longer than ``SKIP_READ_TIMEOUT_SECONDS``, an older file without ``ops.exports``): then
    nothing is skipped, which is always correct, only slower."""
    import duckdb

    from pipelines.resources import connect_waiting_for_lock

    path = paths.internal_warehouse
    if not path.exists():
        return {}
    try:
        con = connect_waiting_for_lock(
            path, SKIP_READ_TIMEOUT_SECONDS,
            connect=lambda p: duckdb.connect(str(p), read_only=True))
    except duckdb.Error as exc:
        print(f"could not read {path.name} ({type(exc).__name__}); every complete export "
              f"gets an ingest run", file=sys.stderr)
        return {}
    try:
        rows = con.execute(
            "SELECT export_id, content_hash, "
            "strftime(timezone('UTC', ingested_at), '%Y-%m-%d %H:%M:%S UTC') "
            "FROM ops.exports WHERE status = 'accepted'").fetchall()
    except duckdb.CatalogException:
        return {}
    finally:
        con.close()
    return {export_id: (digest, at) for export_id, digest, at in rows}


def _materialized_partitions(instance) -> set[str]:
    """Export partitions whose staged tables have a materialization in this Dagster instance."""
    from assets.validation import STAGED_TABLES, staged_key

    return set.intersection(*(instance.get_materialized_partitions(staged_key(t))
                              for t in STAGED_TABLES))


def _skippable(export, accepted: dict[str, tuple[str, str]],
               materialized: set[str]) -> str | None:
    """When ``export`` needs no ingest run: the time its identical content was validated.

    Its run would only hash the files and report "unchanged". Skipped when the content hash
    equals that of the export's last ingestion *and* that ingestion was accepted (a blocked
    export is run every time: its blocking checks must keep failing and the exit status stay
    2) *and* the instance already shows a materialization of the partition (a run killed
    after the warehouse commit, or a new DAGSTER_HOME, still gets one run that records it)."""
    from ketamine_outcomes.discovery import content_hash

    known = accepted.get(export.export_id)
    if known is None or export.export_id not in materialized:
        return None
    digest, validated_at = known
    return validated_at if content_hash(export) == digest else None


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    sample = _prepare_landing(args)
    from ketamine_outcomes.discovery import discover_exports
    from ketamine_outcomes.settings import resolve_paths
    from pipelines.definitions import defs

    paths = resolve_paths()
    instance = _instance()
    note = " (bundled sample exports)" if sample else ""
    print(f"landing directory: {paths.landing_dir}{note}")
    quiet = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    tags = {CLI_PID_TAG: str(os.getpid())}
    _release_runs_of_dead_cli_processes(instance)
    ok = defs.resolve_job_def("discover_exports_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=quiet, tags=tags).success
    exports = discover_exports(paths.landing_dir)
    ingest = defs.resolve_job_def("ingest_export_job")
    accepted = _accepted_exports(paths)
    materialized = _materialized_partitions(instance) if accepted else set()
    for export in exports:
        if export.status != "complete":
            print(f"  {export.export_id}: {export.status} — {export.reason}")
            continue
        validated_at = _skippable(export, accepted, materialized)
        if validated_at is not None:
            print(f"  export {export.export_id} unchanged since {validated_at}, not re-run")
            continue
        res = ingest.execute_in_process(partition_key=export.export_id, instance=instance,
                                        raise_on_error=False, run_config=quiet, tags=tags)
        # a blocked export fails its run on purpose (blocking asset checks); that is exit 2
        # (reported by the summary), not a pipeline failure
        ok = ok and (res.success or _was_blocked(paths, export.export_id))
    publish = defs.resolve_job_def("publish_marts_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=quiet, tags=tags)
    ok = ok and publish.success
    if not ok:
        print("pipeline FAILED: see the run logs above (or `make dev` and the Runs page)",
              file=sys.stderr)
        return EXIT_FAILED
    # WARN checks never fail the run: their summaries are printed, not the exit status
    fired = [str(ev.metadata["summary"].value) for ev in publish.get_asset_check_evaluations()
             if ev.check_name.startswith("safety_signal_") and not ev.passed]
    return _summarise(paths, {e.export_id for e in exports}, time.perf_counter() - started,
                      fired)


def _summarise(paths, present: set[str], seconds: float, safety_fired: list[str]) -> int:
    import duckdb

    from ketamine_outcomes.report import summary_lines
    from ketamine_outcomes.safety import summary_lines as safety_summary_lines

    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        quality = con.execute(
            "SELECT export_id, status, table_name, rows_read, rows_accepted, rows_quarantined, "
            "rows_duplicate, blocking_reason FROM marts.data_quality ORDER BY ALL").fetchall()
        lines = summary_lines(con)
        safety = safety_summary_lines(con, safety_fired)
    finally:
        con.close()
    quality = [q for q in quality if q[0] in present]
    print("\nexports:")
    totals = [0, 0, 0, 0]
    problems = []
    for _export, status, _table, read, acc, quar, dup, reason in quality:
        if status in ("blocked", "refused") and not (reason or "").startswith("export blocked:"):
            problems.append(f"  {status.upper()}: {reason}")
        if status == "accepted":
            totals = [a + (b or 0) for a, b in zip(totals, (read, acc, quar, dup), strict=True)]
    by_export: dict[str, str] = {q[0]: q[1] for q in quality}
    for export_id, status in sorted(by_export.items()):
        print(f"  {export_id}: {status}")
    print(f"rows read {totals[0]}, accepted {totals[1]}, quarantined {totals[2]}, "
          f"duplicates {totals[3]}")
    for line in dict.fromkeys(problems):
        print(line)
    print()
    print("\n".join(lines))
    print()
    print("\n".join(safety))
    print(f"\nwarehouse (analysts, read-only): {paths.warehouse}")
    print(f"HTML report: {paths.report_dir / 'index.html'}")
    print(f"Great Expectations Data Docs: {paths.data_docs_dir}")
    print(f"finished in {seconds:.1f} s")
    return EXIT_BLOCKED if problems else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ketamine-outcomes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the whole pipeline headless")
    run_p.add_argument("--sample-patients", type=int, default=3000,
                       help="patients in the bundled sample (when OUTCOMES_LANDING_DIR is unset)")
    run_p.add_argument("--seed", type=int, default=20261126)
    run_p.add_argument("--log-level", default="WARNING",
                       help="Dagster console log level (DEBUG shows every event)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as exc:  # noqa: BLE001 - the exit status is the contract
        print(f"pipeline FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
