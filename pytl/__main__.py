"""``python -m pytl demo``: see pytl.cli."""

import sys

from pytl.cli import main

if __name__ == "__main__":
    sys.exit(main())
