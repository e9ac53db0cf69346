"""``python -m spikemask.cli`` (and ``torchrun -m spikemask.cli``): the ``spikemask`` command."""

import sys

from spikemask.cli import main

sys.exit(main())
