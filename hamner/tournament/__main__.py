"""`python -m hamner.tournament SPEC ...`: the same as `hamner tournament` (see `hamner.commands.tournament`)."""
import sys

from hamner.commands.tournament import main

sys.exit(main(prog="python -m hamner.tournament"))
