"""Hamner's commands, one module each with `main(argv, prog=...)`; `dispatcher` runs `hamner COMMAND`."""
