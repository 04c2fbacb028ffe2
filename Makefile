# The two commands a new user needs: `make serve` and `make test`.
VENV := .venv
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install serve test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install
	scripts/install
	touch $@

serve: install
	$(VENV)/bin/rapport serve

test: install
	$(VENV)/bin/python -m pytest

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy
