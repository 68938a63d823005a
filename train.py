"""`python train.py ...`: the same as `hamner train ...` (the command lives in `hamner.commands.train`)."""
import sys

from hamner.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
