"""``dcnios-consumer``: not implemented yet (issue: rate-controlled consumer groups)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    sys.stderr.write("NotImplementedError: dcnios-consumer is not implemented yet; see the issue tracker\n")
    return 1
