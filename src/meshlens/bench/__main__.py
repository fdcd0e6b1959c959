"""``python -m meshlens.bench`` = ``meshlens bench`` (see meshlens.bench.cli)."""

import sys

from .cli import main

sys.exit(main())
