"""`python train.py ...`: the same as `hamner train ...` (the command lives in `hamner.train_cli`)."""
import sys

from hamner.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
