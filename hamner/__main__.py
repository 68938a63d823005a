"""`python -m hamner COMMAND ...`: the same as the `hamner` console command (see `hamner.commands`)."""
import sys

from hamner.commands import main

sys.exit(main())
