"""`python -m aligner ...` runs the command line (see aligner/cli.py)."""
from aligner.cli import main

raise SystemExit(main())
