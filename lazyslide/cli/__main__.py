"""``python -m lazyslide.cli``."""

import sys

from . import main

sys.exit(main())
