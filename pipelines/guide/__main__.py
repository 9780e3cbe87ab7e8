"""`python -m pipelines.guide [search] ...`: see pipelines.guide.cli."""

import sys

from pipelines.guide.cli import main

sys.exit(main())
