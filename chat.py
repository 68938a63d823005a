"""`python chat.py ...`: the same as `hamner chat ...` (the command lives in `hamner.chat_cli`)."""
import sys

from hamner.chat_cli import main

if __name__ == "__main__":
    sys.exit(main())
