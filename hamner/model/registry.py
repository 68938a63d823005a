"""A name -> class mapping whose classes are imported on first use, their config checks at hand without import.

The mixer and MLP registries are read by `hamner.model.config` to validate names and settings; importing the
classes (and torch with them) only when a model is built keeps `import hamner` light. So each entry also
holds the torch-free class the registered class inherits its `check_config` from (`settings(name)`).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from hamner.model.checks import ConfigCheck


class LazyRegistry(Mapping[str, type]):
    """Maps a name to the class at "package.module:ClassName", imported when first looked up.

    `entries` maps each name to that target and the torch-free settings class the target inherits.
    """

    def __init__(self, entries: dict[str, tuple[str, type[ConfigCheck]]]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> type:
        module, _, attr = self._entries[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)

    def __contains__(self, name: object) -> bool:
        return name in self._entries  # without importing anything

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def settings(self, name: str) -> type[ConfigCheck]:
        """The class whose `check_config` checks the settings of `name` (imports nothing)."""
        return self._entries[name][1]
