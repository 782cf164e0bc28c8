"""`python -m store [--flags]`: run the store without the seriesflow CLI (tests, debugging)."""

from __future__ import annotations

import argparse
import sys

from seriesflow import settings
from store.config import StoreConfig
from store.server import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m store", description=__doc__)
    settings.add_flags(parser, StoreConfig)
    sys.exit(main(settings.load(StoreConfig, args=parser.parse_args())))
