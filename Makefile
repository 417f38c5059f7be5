# The verbs people type. Every target creates the virtualenv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean check-templates layer deploy

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

bench: setup
	$(PY) -m benchmarks.run_benchmarks
	$(PY) -m benchmarks.arrivals

clean:
	rm -rf $(VENV) demo-data .pytest_cache .venv-tools build .aws-sam

# ---- AWS deployment --------------------------------------------------------------------------
# template.yaml + state_machine/; the SAM, cfn-lint and checkov tools live in .venv-tools
# (scripts/check_templates.sh installs them from scripts/tools-requirements.txt).
STACK ?= cdc-pipeline
SAM := .venv-tools/sam/bin/sam
LAYER := build/layer/python
stack_output = aws cloudformation describe-stacks --stack-name $(STACK) --output text \
	--query "Stacks[0].Outputs[?OutputKey=='$(1)'].OutputValue"

check-templates:
	bash scripts/check_templates.sh

# One build of the cdc_pipeline package for both runtimes: the Lambdas' SharedLayer
# (build/layer/python/) and the Glue job's --extra-py-files zip (build/cdc_pipeline.zip). The layer
# also carries a current boto3: the Lambda runtime's bundled one may predate S3 conditional writes
# (PutObject IfMatch / IfNoneMatch), which the commit's compare-and-swap needs.
# Plain python3: deploying needs neither the dev virtualenv nor Java.
layer:
	rm -rf build/layer build/cdc_pipeline.zip
	python3 -c "import shutil; shutil.copytree('cdc_pipeline', '$(LAYER)/cdc_pipeline', ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))"
	python3 -m pip install --quiet --target $(LAYER) "boto3>=1.36"
	cd $(LAYER) && python3 -m zipfile -c ../../cdc_pipeline.zip cdc_pipeline

deploy: check-templates layer
	$(SAM) build
	$(SAM) deploy --stack-name $(STACK) --no-fail-on-empty-changeset $(if $(wildcard samconfig.toml),,--guided)
	aws s3 cp glue_jobs/ingest_table.py "$$($(call stack_output,GlueScriptLocation))"
	aws s3 cp build/cdc_pipeline.zip "$$($(call stack_output,GlueExtraPyFilesLocation))"
