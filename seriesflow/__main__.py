"""`python -m seriesflow` is the `seriesflow` command."""

import sys

from seriesflow.cli import main

sys.exit(main())
