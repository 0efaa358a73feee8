"""`python -m app` is the same as the `cellpol` command; it is also the entry of the PyInstaller bundle
(packaging/cellpol.spec)."""

import multiprocessing
import os
import sys

from app.cli import main

if __name__ == "__main__":
    # In a frozen bundle a child process started by multiprocessing re-runs this executable; freeze_support
    # turns it into the child instead of a second app. Without a bundle it does nothing.
    multiprocessing.freeze_support()
    if getattr(sys, "frozen", False):
        # A windowed Windows executable has no console: print() would fail on None streams.
        if sys.stdout is None:
            sys.stdout = open(os.devnull, "w")
        if sys.stderr is None:
            sys.stderr = open(os.devnull, "w")
    sys.exit(main())
