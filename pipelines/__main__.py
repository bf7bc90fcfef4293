"""`python -m pipelines` runs the sfbatches command line."""

from pipelines.cli import entry_point

raise SystemExit(entry_point())
