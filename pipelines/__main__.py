"""`python -m pipelines` runs the sfbatches command line."""

from pipelines.cli import entry_point

entry_point()
