"""``python -m trainleak.cli``: the ``trainleak`` command."""

import sys

from trainleak.cli import main

sys.exit(main())
