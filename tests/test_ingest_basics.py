"""Ingestion through Dagster on real files: accounting, supersession, skipping unchanged."""


def test_valid_export_is_accepted_and_accounted(pipeline):
    pipeline.write_export("siteA-20261101T0600")
    pipeline.ingest_all()
    acc = pipeline.accounting("siteA-20261101T0600")
    assert acc["patients"][:6] == ("accepted", 3, 3, 0, 0, False)
    assert acc["treatments"][:6] == ("accepted", 4, 4, 0, 0, False)
    assert acc["assessments"][:6] == ("accepted", 5, 5, 0, 0, False)
    # "007"-style ids stay strings; NRS keeps its exact decimal
    scores = pipeline.query("SELECT CAST(score AS VARCHAR) FROM staging.current_assessments "
                            "WHERE instrument = 'NRS_PAIN' ORDER BY day")
    assert scores == [("7.0",), ("4.9",)]


def test_duplicate_unknown_header_blocks_without_echoing_it(pipeline):
    canary = "2031-07-19"  # an identifier used as a header, twice
    patients = (f"patient_id,site_id,indication,sex,age_band,{canary},{canary}\n"
                "PT0001,site_a,MDD,F,25-34,x,y\n")
    tables = {"patients": patients, "treatments": "patient_id,day,session_number,route\n",
              "assessments": "patient_id,instrument,day,score\n"}
    pipeline.write_export("siteB-20261102T0600", tables)
    pipeline.ingest_all(raise_on_error=False)
    acc = pipeline.accounting("siteB-20261102T0600")
    status, *_rest, blocked, reason = acc["patients"]
    assert status == "blocked" and blocked
    assert "duplicate_column" in reason and "(an unknown column)" in reason
    assert canary not in reason
