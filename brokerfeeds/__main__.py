"""``python -m brokerfeeds``: the same as the ``brokerfeeds`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
