"""``python -m gpuseg`` is the same as the ``gpuseg`` command."""

import sys

from gpuseg.cli import main

sys.exit(main())
