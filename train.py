"""`python train.py`: train a Hamner model through a curriculum (see `python train.py --help`).

A thin entry point: the flags and the command live in `hamner.train_cli` (`main(argv)`).
"""
import sys

from hamner.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
