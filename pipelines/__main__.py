"""`python -m pipelines` runs the sfbatches command line."""

from pipelines.cli import main

raise SystemExit(main())
