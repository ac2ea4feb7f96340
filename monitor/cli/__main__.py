"""`python -m monitor.cli`: the `anomon` command."""

import sys

from monitor.cli import main

sys.exit(main())
