"""sfbatches: keep a DuckDB warehouse in step with SiliconFlow batch jobs."""
