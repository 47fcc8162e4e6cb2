"""`python -m prunelab` (also what `torchrun -m prunelab train ...` runs)."""

import sys

from prunelab.cli import main

sys.exit(main())
