"""``python -m spikemask``: the same as the ``spikemask`` command."""

import sys

from spikemask.cli import main

sys.exit(main())
