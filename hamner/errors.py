"""Every error Hamner reports to a user, under one base class.

A `HamnerError` is bad input or a run that cannot go on, never a bug: its message is one line that
names the problem and how to fix it. Commands run through `hamner.commands.parsing.command`, which prints such an
error as `error: <message>` and exits with status 2; anything else is a bug and keeps its traceback.
Each error is raised where the problem is found, as the subclass that names its kind; a `ValueError` from
Hamner code is a call that breaks an API's contract (a kernel given mismatched shapes), that is, a bug.
"""
from __future__ import annotations


class HamnerError(Exception):
    """A one-line, user-facing problem; commands print it and exit with status 2."""


class DataError(HamnerError):
    """A problem with data, tokenizers or shards (a missing file, an unknown field, a foreign tokenizer)."""


class ConfigError(HamnerError):
    """A model file or model fields that do not make a valid model config (an unknown field, a wrong type)."""


class CurriculumError(HamnerError):
    """A curriculum file that does not parse, or does not fit the model it is used with."""


class TrainError(HamnerError):
    """A bad training setting or a run that cannot go on."""


class RunDirError(TrainError):
    """A run directory that cannot be used: another process holds its lock, or it cannot be created."""


class CheckpointError(HamnerError):
    """A checkpoint that is missing, truncated or not ours."""


class InferenceError(HamnerError):
    """A model that cannot be loaded for use (missing, truncated or foreign checkpoint), or an unusable device."""


class ExportError(HamnerError):
    """A model that has no equivalent in the format it is exported to (e.g. a mixer Hugging Face Llama lacks)."""


class EvalError(HamnerError):
    """An evaluation that cannot run on the given model or data (too few tokens, a context too short)."""


class PlotError(HamnerError):
    """A run directory that cannot be plotted."""


class TournamentError(HamnerError):
    """A bad tournament spec or a tournament that cannot go on."""


class DeviceError(HamnerError):
    """A device that torch does not know, or that this machine does not have."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for a one-line error."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
