"""Load: the DuckDB file, one sync run, and the bookkeeping around each load."""
