"""Hamner's commands, one module each with `main(argv, prog=...)`; `dispatcher` runs `hamner COMMAND`.

`length_study` is not a command of its own: `hamner eval RUN --length-gen` hands over to it.
"""
