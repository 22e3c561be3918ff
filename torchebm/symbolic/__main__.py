"""``python -m torchebm.symbolic`` is ``torchebm-codegen``."""

import sys

from .cli import main

sys.exit(main())
