"""One progress bar for the training loop and the index searches (stderr, no dependency).

``desc [########                ]  33.3% 2100/6300 queries [1.2s<2.4s, 1750.0 queries/s] info``,
redrawn in place at most 10 times a second (and always at the end), with a final newline on
close. It draws only when enabled: by default when its stream is a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

__all__ = ["Progress", "stderr_is_terminal"]

_WIDTH = 24


def stderr_is_terminal() -> bool:
    return _is_terminal(sys.stderr)


def _is_terminal(stream: Any) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class Progress:
    """A bar over ``total`` steps; :meth:`update` advances it by ``n`` steps."""

    def __init__(
        self, total: int, desc: str, enabled: Optional[bool] = None, stream: Any = None, unit: str = "it"
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = (_is_terminal(self.stream) if enabled is None else bool(enabled)) and self.stream is not None
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.start = time.perf_counter()
        self._last = float("-inf")
        self._width = 0
        self._drawn = False

    def update(self, n: int = 1, info: str = "") -> None:
        self.n += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and self.n < self.total:
            return
        self._last = now
        frac = min(self.n / self.total, 1.0) if self.total > 0 else 1.0
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        bar = "#" * int(round(_WIDTH * frac))
        line = (
            f"{self.desc} [{bar:<{_WIDTH}}] {100 * frac:5.1f}% {self.n}/{self.total} {self.unit} "
            f"[{elapsed:.1f}s<{eta:.1f}s, {rate:.1f} {self.unit}/s]" + (f" {info}" if info else "")
        )
        self.stream.write("\r" + line.ljust(self._width))  # pad over a longer previous line
        self._width = len(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
