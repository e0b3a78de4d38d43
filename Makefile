# The commands README and CI use. The virtualenv is reused while
# constraints.txt and setup.py are unchanged (installing Beam takes minutes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat constraints.txt setup.py 2>/dev/null | sha1sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8080
DATA_DIR ?= ./data

.PHONY: install run test lint bench fuzz clean flink-home

install: $(STAMP)

$(STAMP): constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt -e '.[gcp,aws,iceberg,flink,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(VENV)/bin/pipeline-do serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

test: install flink-home
	$(PY) -m pytest -q tests

# A Flink 1.20 distribution from PyPI (apache-flink + apache-flink-libraries, unpacked,
# never installed: their pinned apache-beam conflicts with ours) for the Flink tests.
# Skipped when present; FLINK_HOME for the tests is .flink/flink-<version>.
flink-home: install
	PYTHON=$(PY) scripts/flink_home.sh

lint: install
	$(VENV)/bin/ruff check beam_pipelines control_api transforms tests benchmarks fuzz
	$(VENV)/bin/mypy beam_pipelines control_api transforms tests benchmarks fuzz

bench: install
	$(PY) -m benchmarks.run

# Generated hostile bodies through the decode path for a time budget
# (PIPELINE_DO_FUZZ_SECONDS, default 60); not part of make test.
fuzz: install
	$(PY) -X faulthandler -m pytest -q -p no:cacheprovider fuzz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .flink
