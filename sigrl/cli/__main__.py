"""``python -m sigrl.cli`` (and ``torchrun -m sigrl.cli``)."""

import sys

from sigrl.cli import main

sys.exit(main())
