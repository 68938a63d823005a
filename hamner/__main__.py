"""`python -m hamner COMMAND ...`: the same as the `hamner` console command (see `hamner.commands.dispatcher`)."""
import sys

from hamner.commands.dispatcher import main

sys.exit(main())
