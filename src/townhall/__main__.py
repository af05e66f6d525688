"""``python -m townhall``: the same as the ``townhall`` command."""

import sys

from townhall.cli import main

sys.exit(main())
