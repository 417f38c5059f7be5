"""``python -m cdc_pipeline`` is the ``cdc-pipeline`` command."""

import sys

from cdc_pipeline.cli import main

sys.exit(main())
