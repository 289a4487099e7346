"""The progress bar of training epochs.

Where someone watches (a terminal, a Jupyter kernel) and tqdm is installed, ``tqdm.auto`` draws it: a widget
in a notebook, a redrawn bar on a terminal. Otherwise a dependency-free line: redrawn in place on a terminal,
and in a log file (not a TTY) written about every 10% of the epochs, so that CI logs stay short.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any, TextIO


def progress_bar(total: int, desc: str, enabled: bool = True, stream: TextIO | None = None) -> Any:
    """A bar over ``total`` epochs with ``update(n, **postfix)`` and ``close()``: tqdm's where someone watches
    and tqdm is installed, else a ``LineProgress``."""
    if enabled and total > 0 and interactive(stream):
        try:
            tqdm = importlib.import_module("tqdm.auto").tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            return TqdmProgress(tqdm(total=int(total), desc=desc, file=stream, leave=True, dynamic_ncols=True))
    return LineProgress(total, desc, enabled, stream)


class TqdmProgress:
    """tqdm's bar behind LineProgress's interface (the postfix shows the epoch's loss and terms)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, n: int = 1, **postfix: float) -> None:
        if postfix:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class LineProgress:
    def __init__(self, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None, width: int = 20) -> None:
        self.total = max(int(total), 0)
        self.desc = desc
        self.enabled = enabled and self.total > 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.n = 0
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_logged = -1

    def update(self, n: int = 1, **postfix: float) -> None:
        if not self.enabled:
            return
        self.n = min(self.total, self.n + n)
        info = "  ".join(f"{k} {v:.4g}" for k, v in postfix.items())
        elapsed = time.perf_counter() - self.start
        if self._tty:
            filled = int(self.width * self.n / self.total)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r{self.desc} {self.n}/{self.total} [{bar}] {elapsed:.1f}s  {info}\033[K")
            if self.n == self.total:
                self.stream.write("\n")
            self.stream.flush()
            return
        decile = (10 * self.n) // self.total
        if decile != self._last_logged or self.n == self.total:
            self._last_logged = decile
            self.stream.write(f"{self.desc} {self.n}/{self.total} {elapsed:.1f}s  {info}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty and 0 < self.n < self.total:
            self.stream.write("\n")
            self.stream.flush()


def interactive(stream: TextIO | None = None) -> bool:
    """Whether someone is watching: ``stream`` (stderr) is a terminal, or the code runs in a Jupyter kernel.
    A log file, CI and pytest's captured output are not: there progress stays off unless asked for."""
    stream = stream if stream is not None else sys.stderr
    if bool(getattr(stream, "isatty", lambda: False)()):
        return True
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"  # type: ignore
    except Exception:  # noqa: BLE001  (an IPython without a running shell)
        return False
