"""``python -m lifepool run file.py`` (the ``lifepool`` command does the same)."""

import sys

from .app._cli import main

if __name__ == "__main__":
    sys.exit(main())
