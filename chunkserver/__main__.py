"""``python -m chunkserver --config F.toml``: see ``chunkserver.server`` for the config."""

import sys

from chunkserver.server import main

sys.exit(main())
