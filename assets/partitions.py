"""One dynamic partition per export folder: each export is validated and staged once."""

from dagster import DynamicPartitionsDefinition

export_partitions = DynamicPartitionsDefinition(name="exports")
