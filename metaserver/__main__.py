"""``python -m metaserver --config F``: run one metaserver (see ``metaserver.server``)."""

import sys

from metaserver.server import main

sys.exit(main())
