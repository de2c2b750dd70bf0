"""Entry-point helper for the ``python -m torchflava.<command>`` modules."""

import sys
from typing import Callable


def run_command(main: Callable[[], object]) -> None:
    """Run ``main``; report a bad argument or a missing file as one line on stderr and exit with 2."""
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
