"""`python -m pipelines.batch`: see pipelines/batch/__init__.py."""

import sys

from pipelines.batch.cli import main

sys.exit(main())
