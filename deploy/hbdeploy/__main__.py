"""python -m hbdeploy: the deploy program (scripts/deploy.sh is its entry point)."""

import sys

from hbdeploy.cli import main

sys.exit(main(sys.argv[1:]))
