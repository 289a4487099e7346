"""Mixed precision for a training step (``TwoStageTrainer(amp=True)``): autocast and, where needed, loss scaling.

On the CPU the step's forward runs under ``torch.autocast("cpu", torch.bfloat16)``: bfloat16 keeps
float32's exponent range, so no loss scaling is needed. On CUDA it runs in float16 with a
``torch.amp.GradScaler`` (float16's range would flush small gradients to zero), whose state goes into
checkpoints. The MMD ops run in float32 under autocast (csrc/autocast.cpp), as torch's own losses do;
the weights, the optimizer and the gradients stay float32.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pytl.train.state import RunState


class Precision:
    """The step's precision: ``autocast()`` around the forward, ``backward`` and ``step`` through the scaler."""

    def __init__(self, run: RunState) -> None:
        self.enabled = run.settings.amp
        self.device_type = run.device.type
        self.dtype = torch.float16 if self.device_type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if self.enabled and self.device_type == "cuda" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
        else:  # skips the step when the scaled gradients overflowed, and adapts the scale
            self.scaler.step(opt)
            self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)
