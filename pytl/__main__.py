"""``python -m pytl ...``: the command line of pytl.cli."""

import sys

from pytl.cli import main

if __name__ == "__main__":
    sys.exit(main())
