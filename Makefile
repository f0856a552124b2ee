# `make test` and (later) `make demo` set themselves up: a .venv is created when missing and the
# project is installed into it, then re-installed whenever pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# sam's usage reporting: off for tests and builds (no network but the package registries).
export SAM_CLI_TELEMETRY := 0

.PHONY: test test-kcl mutation demo clean build-ProcessorFunction build-HydrateFunction

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# amazon-kclpy (the kcl extra) installed as its users install it, jars included: pip builds its
# sdist (PyPI has no wheel; pinned by version and hash in requirements/kclpy.txt) and the sdist's
# bdist_wheel step downloads the KCL jars its pom.xml lists from Maven Central into the wheel.
# pip keeps that wheel in its cache, so a new .venv on the same machine downloads nothing.
# --no-deps: its one dependency, boto3, comes with the project (hashes cover only this file).
KCLPY_STAMP := $(VENV)/.installed-kclpy

$(KCLPY_STAMP): requirements/kclpy.txt requirements/kclpy-build.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes \
		--build-constraint requirements/kclpy-build.txt -r requirements/kclpy.txt
	touch $@

$(STAMP): pyproject.toml $(KCLPY_STAMP) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,kcl]'
	touch $@

# checkov in a venv of its own (requirements/checkov.txt says why); the tests find it there.
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

$(CHECKOV_STAMP): requirements/checkov.txt | $(BIN)/python
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements/checkov.txt
	touch $@

# kinesis-mock (npm kinesis-local), a second Kinesis for the tests only: pinned by its
# package-lock.json, installed into its own folder, and again whenever the lock changes.
KINESIS_MOCK := tests/engines/kinesis-mock
KINESIS_MOCK_STAMP := $(KINESIS_MOCK)/node_modules/.installed

$(KINESIS_MOCK_STAMP): $(KINESIS_MOCK)/package.json $(KINESIS_MOCK)/package-lock.json
	cd $(KINESIS_MOCK) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: $(STAMP) $(CHECKOV_STAMP) $(KINESIS_MOCK_STAMP)
	$(BIN)/ruff check streams processor tests bench
	$(BIN)/ruff format --check streams processor tests bench
	$(BIN)/mypy
	$(BIN)/streams check --template template.yaml
	$(BIN)/python -m pytest --cov

# The KCL fleet tests (marker `fleet`, which `make test` leaves out): the real MultiLangDaemon,
# with the stream on kinesis-mock and the lease tables on moto's server. Apart because each
# daemon takes 30-45 s to its first lease. -rA prints what they measured (takeover times).
test-kcl: $(STAMP) $(KINESIS_MOCK_STAMP)
	$(BIN)/python -m pytest -m fleet -rA

# Mutation testing of the Lambda-side core (docs/mutation.md), not part of `make test`: mutmut in
# a venv of its own (pyproject.toml's `mutation` extra says why), one worker, the fast unit tests
# of the mutated modules only ([tool.mutmut]). It resumes where it stopped and re-tests only what
# changed; `mutmut results` lists the survivors, `mutmut show NAME` shows one.
MUTATION_VENV := $(VENV)/mutation
MUTATION_STAMP := $(MUTATION_VENV)/.installed

$(MUTATION_STAMP): pyproject.toml | $(BIN)/python
	$(PYTHON) -m venv $(MUTATION_VENV)
	$(MUTATION_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MUTATION_VENV)/bin/python -m pip install --quiet -e '.[mutation]'
	touch $@

mutation: $(MUTATION_STAMP)
	$(MUTATION_VENV)/bin/mutmut run --max-children 1
	$(MUTATION_VENV)/bin/mutmut export-cicd-stats
	cat mutants/mutmut-cicd-stats.json

# The main job on the embedded local AWS: endpoint, template, mapping, burst, verified summary.
demo: $(STAMP)
	$(BIN)/streams demo

clean:
	rm -rf $(VENV) mutants .aws-sam .pytest_cache .mypy_cache .ruff_cache $(KINESIS_MOCK)/node_modules

# Called by `sam build` (template.yaml: BuildMethod makefile) with ARTIFACTS_DIR set, once per
# function. What ships to Lambda is a list of folders, each taken without its sub-folders: the
# Lambda-side core (batch, records, dead letters, KPL, backoff, hydrate), the shard sources the
# hydrate function reads with, the writer, and the function's own code; everything else in
# streams/ runs on a laptop or a KCL host (tests/test_artifact.py holds the artifact to that).
# processor/requirements.txt is installed for the function's runtime; boto3 is the runtime's own.
LAMBDA_PYTHON_VERSION := 3.12
LAMBDA_FOLDERS := streams streams/sources streams/writer processor
build-ProcessorFunction build-HydrateFunction:
	for folder in $(LAMBDA_FOLDERS); do \
		mkdir -p "$(ARTIFACTS_DIR)/$$folder" && cp "$$folder"/*.py "$(ARTIFACTS_DIR)/$$folder/"; \
	done
	cp streams/py.typed "$(ARTIFACTS_DIR)/streams/"
	$(PYTHON) -m pip install --quiet --no-compile --disable-pip-version-check \
		--target "$(ARTIFACTS_DIR)" --implementation cp --python-version $(LAMBDA_PYTHON_VERSION) \
		--only-binary=:all: --platform manylinux2014_aarch64 -r processor/requirements.txt
