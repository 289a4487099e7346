"""What the subcommands share: argparse value types, the training options of the demo and the curves,
and the checks of an output figure and a device, made before anything trains."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import torch

from pytl import plot
from pytl.experiments import DEFAULT_CONFIG
from pytl.train import resolve_device

__all__ = ["FIGURE_SUFFIXES", "UsageError", "add_training_options", "angle_list", "check_figure_path",
           "add_distributed_option", "device_option", "int_list", "lambda_value", "non_negative_float",
           "non_negative_int", "positive_int"]

FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


class UsageError(Exception):
    """A bad command line found after parsing: the subcommand prints it and exits with status 2."""


def _bounded(convert: Callable[[str], Any], minimum: float, what: str) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)``, finite and >= minimum, else a message saying ``what`` was expected."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not minimum <= value < math.inf:  # also rejects NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = _bounded(int, 1, "a positive integer")
non_negative_int = _bounded(int, 0, "an integer >= 0")
non_negative_float = _bounded(float, 0.0, "a finite number >= 0")


def lambda_value(text: str) -> float | str:
    """An argparse type: "auto" (λ chosen from the data, compare_strategies' default) or a finite number >= 0."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return non_negative_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a finite number >= 0, got {text!r}") from None


def int_list(minimum: int) -> Callable[[str], list[int]]:
    """An argparse type: distinct comma-separated integers >= minimum ("10,50,100")."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {minimum} (e.g. 10,50,100), got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {minimum}, got {text!r}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"the values must be distinct, got {text!r}")
        return values

    return parse


def angle_list(text: str) -> list[float]:
    """An argparse type: distinct comma-separated finite angles in degrees ("0,45,90")."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated angles in degrees (e.g. 0,45,90), got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite angles in degrees, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"the angles must be distinct, got {text!r}")
    return values


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """λ and the two stages' epochs, as compare_strategies takes them, with its defaults (the demo and two curves)."""
    lam, align, finetune = (DEFAULT_CONFIG[k] for k in ("lambda_mmd", "align_epochs", "finetune_epochs"))
    parser.add_argument("--lambda", dest="lambda_mmd", type=lambda_value, default=lam,
                        help=f"weight λ of the MMD² term, or 'auto': chosen from a grid by the target labels "
                             f"(default {lam})")
    parser.add_argument("--align-epochs", type=non_negative_int, default=align, help=f"stage-1 epochs (default {align})")
    parser.add_argument("--finetune-epochs", type=non_negative_int, default=finetune,
                        help=f"stage-2 epochs (default {finetune})")


def add_distributed_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--distributed N``: rerun the command on N local processes under torchrun; ``what`` each of them does."""
    parser.add_argument("--distributed", type=positive_int, default=None, metavar="N",
                        help="run on N local processes (starts torchrun --standalone --nproc_per_node=N -m pytl ...; "
                             f"gloo): {what}; rank 0 prints")


def check_figure_path(path: str | None, flag: str) -> None:
    """A figure can be written to ``path`` (None: no figure asked): a known suffix, and matplotlib there."""
    if path is None:
        return
    if not path.lower().endswith(FIGURE_SUFFIXES):
        raise UsageError(f"{flag} expects a .png, .pdf, .svg or .jpg file name, got {path!r}")
    if not plot.matplotlib_available():
        raise UsageError(f"{flag} needs matplotlib: pip install matplotlib (or pip install 'pytl[plot]')")


def device_option(text: str) -> torch.device:
    """``--device`` as a torch.device ("auto": CUDA when there is one); a UsageError says why not."""
    try:
        return resolve_device(text)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None
