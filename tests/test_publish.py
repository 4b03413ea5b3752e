"""Publishing: analysts in other processes never block a run and never see a mixed set."""

import json
import subprocess
import sys
import textwrap

import duckdb

from ketamine_outcomes.sample_exports import generate_landing
from tests.reliability_support import published_run_ids

MARTS = ["response_rates", "time_to_response", "time_to_response_curve", "indication_tests",
         "attrition", "data_quality"]

READER = textwrap.dedent("""
    import duckdb, json, sys, time
    import os, select
    path, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    marts = {marts!r}
    union = " UNION ALL ".join(f"SELECT DISTINCT run_id FROM marts.{{m}}" for m in marts)
    seen, mixed, queries = set(), 0, 0
    con = duckdb.connect(path, read_only=True)
    print("ready", flush=True)
    end = time.time() + seconds
    # query until told to stop on stdin (or the safety timeout): the session stays open
    while time.time() < end and not select.select([sys.stdin], [], [], 0)[0]:
        if mode == "reconnect":
            con.close()
            con = duckdb.connect(path, read_only=True)
        ids = {{r[0] for r in con.execute(union).fetchall()}}
        mixed += len(ids) != 1
        seen |= ids
        queries += 1
        time.sleep(0.02)
    print(json.dumps({{"seen": sorted(seen), "mixed": mixed, "queries": queries}}), flush=True)
""").format(marts=MARTS)


def _run_ids(path) -> set[str]:
    return published_run_ids(path, MARTS)


def test_every_mart_has_comments_and_common_columns(sample_warehouse):
    con = duckdb.connect(str(sample_warehouse), read_only=True)
    try:
        tables = dict(con.execute("SELECT table_name, comment FROM duckdb_tables() "
                                  "WHERE schema_name = 'marts'").fetchall())
        cols = con.execute("SELECT table_name, column_name, comment FROM duckdb_columns() "
                           "WHERE schema_name = 'marts'").fetchall()
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM duckdb_schemas() "
                                             "WHERE database_name = current_database()").fetchall()}
    finally:
        con.close()
    assert set(MARTS) <= set(tables)
    assert all(tables[t] for t in MARTS), "every mart has a COMMENT ON TABLE"
    missing = [(t, c) for t, c, comment in cols if not comment]
    assert not missing, f"columns without COMMENT ON: {missing}"
    for table in MARTS:
        names = {c for t, c, _ in cols if t == table}
        assert {"definition_version", "run_id", "built_at"} <= names
    # nothing patient-level or internal is published
    assert "staging" not in schemas and "derived" not in schemas and "ops" not in schemas


def test_open_readers_never_block_a_run_and_never_see_a_mixed_set(pipeline):
    generate_landing(pipeline.landing, n_patients=400, seed=3)
    pipeline.ingest_all()
    pipeline.publish()
    first = _run_ids(pipeline.warehouse)
    assert len(first) == 1

    readers = [
        subprocess.Popen([sys.executable, "-c", READER, str(pipeline.warehouse), mode, "600"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for mode in ("hold", "reconnect")
    ]
    try:
        for r in readers:
            assert r.stdout.readline().strip() == "ready"
        res = pipeline.publish()  # must not wait for or fail on the readers' sessions
        assert res.success
        # both readers were still querying with their sessions open when the run finished
        assert all(r.poll() is None for r in readers)
        second = _run_ids(pipeline.warehouse)
        outputs = [json.loads(r.communicate("stop\n", timeout=60)[0].strip().splitlines()[-1])
                   for r in readers]
    finally:
        for r in readers:
            r.kill()
    assert second != first and len(second) == 1
    hold, reconnect = outputs
    assert hold["mixed"] == 0 and reconnect["mixed"] == 0
    assert hold["seen"] == sorted(first), "an open session keeps the snapshot it opened"
    assert set(reconnect["seen"]) <= first | second and sorted(second)[0] in reconnect["seen"]
