"""A name -> class mapping whose classes are imported on first use.

The mixer and MLP registries are read by `hamner.model.config` to validate names; importing the
classes (and torch with them) only when a model is built keeps `import hamner` light.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping


class LazyRegistry(Mapping[str, type]):
    """Maps a name to the class at "package.module:ClassName", imported when first looked up."""

    def __init__(self, targets: dict[str, str]) -> None:
        self._targets = dict(targets)

    def __getitem__(self, name: str) -> type:
        module, _, attr = self._targets[name].partition(":")
        return getattr(importlib.import_module(module), attr)

    def __contains__(self, name: object) -> bool:
        return name in self._targets  # without importing anything

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)
