"""`python -m labtel.cli` runs the `labtel` command line."""

from labtel.cli import main

main()
