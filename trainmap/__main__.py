"""Run the command-line interface: ``python -m trainmap``."""

import sys

from trainmap.cli import main

sys.exit(main())
