"""The pipeline, headless (``pipelines.cli run``), with timing probes around its functions.

The probes wrap functions by name at run time (nothing in ``ketamine_outcomes`` or
``assets`` is edited): each call's start and end (``time.time()``) goes to the JSON file
named by ``BENCH_PROBES_OUT``, so ``run.py`` can split a Dagster step into read / GX /
the rest, and compute a peak RSS per stage from its samples. A probe whose target does
not exist any more (code moved) is skipped and listed under ``missing``; the coarse
per-step numbers from the Dagster event log do not depend on probes.

Probes only see code running in this process. ``execute_in_process`` (what the CLI uses)
runs every step here; if the CLI ever launches step processes, only the event-log
numbers remain.

    BENCH_PROBES_OUT=probes.json python benchmarks/pipeline_run.py run [cli args]

What-if experiments (``BENCH_EXPERIMENTS``, comma-separated; ``run.py --experiments``) patch
the pipeline at run time to measure a recommended change before anyone makes it:

``malloc-trim``        return freed heap to the OS after every export (glibc ``malloc_trim``);
``duckdb-2gb``         ``SET memory_limit = '2GB'`` on every warehouse connection.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import time

CALLS: list[tuple[str, float, float]] = []

#: (module, attribute path, label). Modules are imported first, so lookups made at call time
#: (``from x import f`` bindings inside the pipeline's modules) see the wrapper.
PROBES: list[tuple[str, str, str]] = [
    ("ketamine_outcomes.ingest", "content_hash", "read.hash"),
    ("ketamine_outcomes.ingest", "read_manifest", "read.manifest"),
    ("ketamine_outcomes.ingest", "read_table_file", "read.parse"),
    ("ketamine_outcomes.ingest", "check_identifier_values", "validate.deid"),
    ("ketamine_outcomes.ingest", "validate_table", "validate.rows"),
    ("ketamine_outcomes.ingest", "_stage_table", "validate.stage_write"),
    ("ketamine_outcomes.warehouse", "known_patient_ids", "validate.known_ids"),
    ("ketamine_outcomes.gx_runner", "GxSession.__init__", "gx.session"),
    ("ketamine_outcomes.gx_runner", "GxSession.validate", "gx.validate"),
    ("ketamine_outcomes.gx_runner", "GxSession.build_data_docs", "gx.data_docs"),
    ("polars", "DataFrame.to_pandas", "gx.to_pandas"),
    ("assets.outcomes", "refresh_derived", "derive"),
    ("assets.marts", "build_outcome_marts", "summarise.marts"),
    ("assets.marts", "build_data_quality", "summarise.data_quality"),
    ("assets.marts", "build_safety_events", "summarise.safety"),
    ("assets.marts", "publish_marts", "publish.marts"),
    ("assets.reports", "render_km_plots", "publish.report_plots"),
    ("assets.reports", "render_html_report", "publish.report_html"),
]


def _wrap(fn, label: str):
    @functools.wraps(fn)
    def probe(*args, **kwargs):
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            CALLS.append((label, t0, time.time()))

    return probe


def install() -> list[str]:
    """Wrap every probe target that exists; return the ones that do not."""
    missing = []
    for module_name, path, label in PROBES:
        try:
            owner = importlib.import_module(module_name)
            *parents, attr = path.split(".")
            for part in parents:
                owner = getattr(owner, part)
            fn = getattr(owner, attr)
        except (ImportError, AttributeError):
            missing.append(f"{module_name}.{path}")
            continue
        setattr(owner, attr, _wrap(fn, label))
    return missing


def experiments(names: set[str]) -> list[str]:
    """Apply the what-if patches named in ``names``; return those applied."""
    applied = []
    if "malloc-trim" in names:
        import ctypes

        from ketamine_outcomes import ingest

        libc = ctypes.CDLL("libc.so.6")
        ingest_export = ingest.ingest_export

        def trimmed(*args, **kwargs):
            try:
                return ingest_export(*args, **kwargs)
            finally:
                import gc

                gc.collect()
                libc.malloc_trim(0)

        ingest.ingest_export = trimmed
        import assets.validation

        assets.validation.ingest_export = trimmed
        applied.append("malloc-trim")
    if "duckdb-2gb" in names:
        import pipelines.resources
        from ketamine_outcomes import warehouse

        def limit(connect):
            def limited(*args, **kwargs):
                con = connect(*args, **kwargs)
                con.execute("SET memory_limit = '2GB'")
                return con

            return limited

        warehouse.connect = limit(warehouse.connect)
        if hasattr(pipelines.resources, "connect_waiting_for_lock"):
            pipelines.resources.connect_waiting_for_lock = limit(
                pipelines.resources.connect_waiting_for_lock)
        applied.append("duckdb-2gb")
    return applied


def main(argv: list[str]) -> int:
    started = time.time()
    import pipelines.definitions  # noqa: F401 - the assets' modules, before wrapping
    from pipelines import cli

    imported = time.time()
    wanted = {e for e in os.environ.get("BENCH_EXPERIMENTS", "").split(",") if e}
    applied = experiments(wanted)
    missing = install()
    try:
        rc = cli.main(argv)
    finally:
        out = os.environ.get("BENCH_PROBES_OUT")
        if out:
            with open(out, "w") as fh:
                json.dump({"started": started, "imported": imported, "ended": time.time(),
                           "missing": missing, "experiments": applied, "calls": CALLS}, fh)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
