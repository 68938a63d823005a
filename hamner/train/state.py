"""The trainer's resumable state: named stateful parts in one registry, saved and restored by one loop.

Every part that a resumed run needs (optimizer, gradient scaler, curriculum controller, data
sampler, progress counters, metrics not yet written, random generators) has `state_dict()` and
`load_state_dict()` and is registered once by name; `TrainState.state_dict()` is what trainer.pt
holds, one entry per part. Adding state to the trainer means registering one more part, so the
list of what is saved and the list of what is restored cannot drift apart.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from hamner.errors import CheckpointError
from hamner.train.optim import Optimizers


class Stateful(Protocol):
    """Anything whose state can be saved and put back."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class TrainState:
    """The registry: name -> stateful part, saved and restored in registration order."""

    def __init__(self) -> None:
        self._parts: dict[str, Stateful] = {}

    def register(self, name: str, part: Stateful) -> None:
        if name in self._parts:
            raise ValueError(f"trainer state part {name!r} is registered twice")
        self._parts[name] = part

    def names(self) -> list[str]:
        return list(self._parts)

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self._parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every part; a part missing from `state` is a ValueError naming it."""
        missing = [name for name in self._parts if name not in state]
        if missing:
            raise CheckpointError(f"the saved trainer state lacks {', '.join(missing)}")
        for name, part in self._parts.items():
            part.load_state_dict(state[name])


@dataclass
class Progress:
    """How far the run has come: optimizer steps, tokens trained on, seconds spent training."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens, self.elapsed = int(state["step"]), int(state["tokens"]), float(state["elapsed"])


class RngState:
    """The Python, NumPy and torch generators (and the device's, on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors only (NumPy's key array as an int64 tensor), so trainer.pt needs no pickle."""
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        kind, keys, *rest = state["numpy"]  # keys: a tensor, or the ndarray of checkpoints before format 3
        np.random.set_state((kind, np.asarray(keys).astype(np.uint32), *rest))
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)


OptimizerBuild = Callable[[], Optimizers]
# Group options that depend on the device, not on the run: a run saved on CPU resumes fused on CUDA.
_DEVICE_OPTIONS = ("fused", "foreach")


class OptimizerSlot:
    """The run's optimizer (or list of optimizers), rebuilt fresh where a stage asks for it."""

    def __init__(self, build: OptimizerBuild) -> None:
        self._build = build
        self.optimizer = build()

    def rebuild(self) -> None:
        self.optimizer = self._build()

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.optimizer) if isinstance(self.optimizer, Sequence) else [self.optimizer]

    def state_dict(self) -> Any:
        states = [opt.state_dict() for opt in self.optimizers]
        return states if isinstance(self.optimizer, Sequence) else states[0]

    def load_state_dict(self, state: Any) -> None:
        """Build the optimizer(s) afresh (of the kind the restored controller's stage uses), then load
        `state` into them, keeping this process's device options."""
        self.rebuild()
        building_list = isinstance(self.optimizer, Sequence)
        if isinstance(state, list) != building_list or (building_list and len(state) != len(self.optimizers)):
            saved = len(state) if isinstance(state, list) else 1
            raise CheckpointError(f"saved state holds {saved} optimizer(s), the run builds {len(self.optimizers)}")
        for opt, saved in zip(self.optimizers, state if building_list else [state]):
            options = {k: opt.defaults[k] for k in _DEVICE_OPTIONS if k in opt.defaults}
            opt.load_state_dict(saved)
            for group in opt.param_groups:
                group.update(options)
