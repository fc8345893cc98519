"""``python -m include.migration.schema_diff``: compare both schemas with the mapping, record the check
(exit 1 when the verdict is breaking)."""

from __future__ import annotations

import sys

from include.migration.schema_diff.report import main

sys.exit(main())
