"""AWS Glue entrypoint: ingest one table of a run (see cdc_pipeline.glue_job)."""

import logging
import sys

from cdc_pipeline.glue_job import run_job

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_job(sys.argv[1:])
