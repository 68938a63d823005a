"""Curricula: the TOML format of stages and mixtures (`spec`) and the controller that walks it (`controller`)."""
