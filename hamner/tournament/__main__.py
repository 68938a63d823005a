import sys

from hamner.tournament.cli import main

sys.exit(main())
