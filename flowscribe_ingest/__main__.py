"""`python -m flowscribe_ingest`: the same as the `flowscribe-ingest` console script."""

import sys

from flowscribe_ingest.cli import main

sys.exit(main())
