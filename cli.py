"""Thin wrapper: ``python cli.py generate ...`` is ``sds3d generate ...``."""

import sys

from sds3d.cli import main

if __name__ == "__main__":
    sys.exit(main())
