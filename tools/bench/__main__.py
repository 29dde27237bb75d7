"""``python -m tools.bench``: see ``tools.bench.main``."""

import sys

from tools.bench.main import main

sys.exit(main())
