import sys

from hamner.commands.tournament import main

sys.exit(main())
