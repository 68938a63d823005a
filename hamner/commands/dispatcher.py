"""The `hamner` command: one entry per subcommand, each a module `hamner.commands.NAME` with `main(argv, prog=...)`.

    hamner train --preset demo          (also `python train.py`)
    hamner eval runs/<run> --quick      (also `python -m hamner.eval`)

Adding a subcommand is one line in COMMANDS: its name, the module holding its `main`, and a
summary for `hamner --help`. Modules are imported only when their subcommand runs, so
`hamner --help` is instant and each command pays only for what it uses.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from hamner.commands.parsing import ArgumentParser


@dataclass(frozen=True)
class Command:
    """A subcommand: the module whose `main(argv, prog=...)` runs it, and one line for the listing."""

    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command("hamner.commands.train", "train a model through a staged curriculum"),
    "chat": Command("hamner.commands.chat", "talk to a trained model, or sample from it with --prompt"),
    "eval": Command("hamner.commands.eval", "evaluate a model: loss, task accuracy, needle, length generalisation"),
    "export": Command("hamner.commands.export", "write a checkpoint as a Hugging Face Llama directory or a GGUF file"),
    "prepare": Command("hamner.commands.prepare", "tokenize text files or a Hugging Face dataset into shards"),
    "plot": Command("hamner.commands.plot", "draw a run's loss, LR, throughput and accuracy curves to PNG files"),
    "status": Command("hamner.commands.status", "where runs stand: state, step, stage, losses, ETAs, checkpoint "
                      "(--watch to follow)"),
    "tournament": Command("hamner.commands.tournament", "architecture tournament: entrants resized to one size, "
                          "elimination rounds, report"),
    "study": Command("hamner.commands.study", "length study: train each arm on one curriculum, compare their "
                     "length generalisation"),
}


def listing() -> str:
    """The subcommands and their summaries, as `hamner --help` shows them."""
    width = max(map(len, COMMANDS))
    return "commands:\n" + "\n".join(f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()) + \
        "\n\n`hamner COMMAND --help` describes a command's options."


def main(argv: list[str] | None = None) -> int:
    """Run `hamner COMMAND [ARGS...]`: hand ARGS to the command's own parser and return its exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="hamner", usage="hamner [-h] COMMAND [ARGS...]", epilog=listing(),
                            description="Hamner: train, evaluate and use small Llama-style models.",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    name = parser.parse_args(argv[:1]).command  # the rest belongs to the command's own parser
    module = importlib.import_module(COMMANDS[name].module)
    return module.main(argv[1:], prog=f"hamner {name}")
