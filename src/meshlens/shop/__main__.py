"""``python -m meshlens.shop serve|probe|visit ...`` (see meshlens.shop.main)."""

import sys

from .main import main

sys.exit(main())
