"""`python chat.py ...`: the same as `hamner chat ...` (the command lives in `hamner.commands.chat`)."""
import sys

from hamner.commands.chat import main

if __name__ == "__main__":
    sys.exit(main())
