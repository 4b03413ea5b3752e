"""Domain logic of ketamine-outcomes: reading exports, validation, clinical derivations,
statistics and publishing. Nothing here imports Dagster, so all of it is testable alone;
the Dagster assets in ``assets/`` are thin wiring around these functions."""
