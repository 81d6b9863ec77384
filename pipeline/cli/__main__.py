"""``python -m pipeline.cli``: the ``auditor`` command without its console script."""

from __future__ import annotations

import sys

from pipeline.cli.main import main

sys.exit(main())
