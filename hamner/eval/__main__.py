"""`python -m hamner.eval RUN_OR_CHECKPOINT ...`: the same as `hamner eval` (see `hamner.eval.cli`)."""
import sys

from hamner.eval.cli import main

sys.exit(main())
