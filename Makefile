# Everything runs inside .venv, created on first use; `make demo` and `make test` need nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DB ?= siliconflow.duckdb

.PHONY: install browser demo test sync models report bench lint notebooks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(BIN)/sfbatches demo --db demo.duckdb

test: install browser
	$(BIN)/python -m pytest

# The HTML report's tests look at the page in Debian's Chromium: installed (as root) if missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ test "$$(id -u)" = 0 && apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	echo "make: chromium and chromium-driver are missing (install them as root): the HTML report tests will fail"

sync: install
	$(BIN)/sfbatches sync --db $(DB)

models: install
	$(BIN)/sfbatches models --db $(DB)

report: install
	$(BIN)/sfbatches report --db $(DB)

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/sqlfluff lint sql/

# SFBATCHES_DB only when DB is given (`make notebooks DB=…`): unset, the notebooks may fall back
# to demo.duckdb. JupyterLab refuses to run as root (containers) without --allow-root.
notebooks: install
	$(BIN)/python -m pip install --quiet -e ".[notebooks]"
	$(if $(filter-out file,$(origin DB)),SFBATCHES_DB=$(DB) )$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root )notebooks/

clean:
	rm -rf $(VENV) demo.duckdb demo.duckdb.* .demo.duckdb.dlt .pytest_cache .ruff_cache
