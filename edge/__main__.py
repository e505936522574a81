"""`python -m edge` runs the parse-edge CLI."""

import sys

from edge.cli import main

sys.exit(main())
