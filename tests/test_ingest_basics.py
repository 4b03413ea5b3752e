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
