"""A progress bar for long benchmark runs: tqdm on a terminal when it is installed, else a line every 10%."""
from __future__ import annotations

import sys

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # tqdm is optional
    _tqdm = None

__all__ = ["Progress"]


class Progress:
    """Counts units of work toward `total` and shows it on stderr (nothing when disabled)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total = max(1, total)
        self.desc = desc
        self.count = 0
        self._next_report = 0.1
        self._enabled = enabled
        self._bar = _tqdm(total=self.total, desc=desc, file=sys.stderr, leave=False) if enabled and _tqdm and sys.stderr.isatty() else None

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._enabled and self.count / self.total >= self._next_report:
            print(f"{self.desc}: {self.count}/{self.total}", file=sys.stderr, flush=True)
            while self._next_report <= self.count / self.total:
                self._next_report += 0.1

    def set_description(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(f"{self.desc} {text}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
