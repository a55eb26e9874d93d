"""`python -m mentor_operator` runs the operator (same as `mentor operator`)."""

import sys

from .cli import main

sys.exit(main(["operator", *sys.argv[1:]]))
