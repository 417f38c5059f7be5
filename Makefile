# The verbs people type. Every target creates the virtualenv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench bench-quick soak clean check-templates layer deploy enable-schedule smoke

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/check_java.sh
	@bash scripts/check_java.sh
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(PY) -m cdc_pipeline.demo --workdir demo-data

test: setup
	$(PY) -m ruff check cdc_pipeline lambdas glue_jobs tests benchmarks
	$(PY) -m pytest
	bash scripts/check_templates.sh

lint: setup
	$(PY) -m ruff check cdc_pipeline lambdas glue_jobs tests benchmarks
	$(PY) -m mypy

# What a run costs against the naive script and DuckDB (10M rows, 100 small tables: ~20 minutes);
# one table, every figure also in benchmarks/results/cost.json. benchmarks/README.md has the others.
bench: setup
	$(PY) -m benchmarks.cost --json benchmarks/results/cost.json

bench-quick: setup
	$(PY) -m benchmarks.cost --quick --json benchmarks/results/cost-quick.json

# The fault property test, long: SOAK_EXAMPLES random histories, each with a fault injected at a
# random point of a random run, stopping after SOAK_SECONDS; prints how many histories and faults
# it tried (tests/e2e/test_fault_properties.py; CI tries two).
SOAK_EXAMPLES ?= 200
SOAK_SECONDS ?= 3600
soak: setup
	SOAK_EXAMPLES=$(SOAK_EXAMPLES) SOAK_SECONDS=$(SOAK_SECONDS) \
		$(PY) -m pytest -q -p no:cacheprovider -m soak tests/e2e/test_fault_properties.py

clean:
	rm -rf $(VENV) demo-data .pytest_cache .venv-tools build .aws-sam

# ---- AWS deployment --------------------------------------------------------------------------
# template.yaml + state_machine/; the SAM, cfn-lint and checkov tools live in .venv-tools
# (scripts/check_templates.sh installs them from scripts/tools-requirements.txt). The ordering and
# the checks are in cdc_pipeline/aws/deploy.py and smoke.py (plain python3 + boto3: deploying needs
# neither the dev virtualenv nor Java). REGION and PROFILE default to samconfig.toml's, then to the
# AWS CLI's; every AWS call of a target uses them.
STACK ?= cdc-pipeline
REGION ?=
PROFILE ?=
# deploy.py and smoke.py need Python 3.11 or later (tomllib, datetime.UTC): PYTHON3=python3.11 names one.
PYTHON3 ?= python3
SAM := .venv-tools/sam/bin/sam
LAYER := build/layer/python
DEPLOY := $(PYTHON3) -m cdc_pipeline.aws.deploy
TARGET_ARGS = --stack $(STACK) $(if $(REGION),--region $(REGION)) $(if $(PROFILE),--profile $(PROFILE))
# Refuses an older Python in words any Python 3 (even 2) prints, before a traceback could.
CHECK_PYTHON3 = @$(PYTHON3) -c 'import sys; sys.version_info >= (3, 11) or sys.exit("make $@: %s is Python %s; the deploy tools need Python 3.11 or later: give one with PYTHON3=python3.11" % (sys.executable, sys.version.split()[0]))'

check-templates:
	bash scripts/check_templates.sh

# The Lambdas' SharedLayer (build/layer/python/): the cdc_pipeline package plus a current boto3, as
# the Lambda runtime's bundled one may predate S3 conditional writes (PutObject IfMatch /
# IfNoneMatch), which the commit's compare-and-swap needs. The Glue job's zip of the same package
# is built, content-hashed and uploaded by `deploy.py release`.
layer:
	$(CHECK_PYTHON3)
	rm -rf build/layer
	$(PYTHON3) -c "import shutil; shutil.copytree('cdc_pipeline', '$(LAYER)/cdc_pipeline', ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))"
	$(PYTHON3) -m pip install --quiet --target $(LAYER) "boto3>=1.36"

# Credentials and region first (seconds), then the checks and builds (a minute), then the ordered
# release: Glue artifacts under content-hashed keys, then one stack update. ENABLE_SCHEDULE=1
# enables the schedule once everything is in place; without it the schedule stays as it was
# (DISABLED on a new stack). The release refuses while executions run; FORCE=1 deploys anyway.
deploy:
	$(CHECK_PYTHON3)
	$(DEPLOY) preflight $(TARGET_ARGS)
	bash scripts/check_templates.sh
	$(MAKE) --no-print-directory layer
	$(SAM) build
	$(DEPLOY) release $(TARGET_ARGS) --sam $(SAM) $(if $(ENABLE_SCHEDULE),--enable-schedule) $(if $(FORCE),--force)

enable-schedule:
	$(CHECK_PYTHON3)
	$(DEPLOY) enable-schedule $(TARGET_ARGS)

# Two tiny generated tables through the deployed pipeline, checked with Athena, then removed.
smoke:
	$(CHECK_PYTHON3)
	$(PYTHON3) -m cdc_pipeline.aws.smoke $(TARGET_ARGS)
