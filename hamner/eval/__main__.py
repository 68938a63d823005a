"""`python -m hamner.eval RUN_OR_CHECKPOINT ...`: the same as `hamner eval` (see `hamner.commands.eval`)."""
import sys

from hamner.commands.eval import main

sys.exit(main(prog="python -m hamner.eval"))
