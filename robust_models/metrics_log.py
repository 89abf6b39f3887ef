"""Append-only training log: CSV (fixed columns, header once) or JSON lines, chosen by file extension."""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Mapping, Sequence

__all__ = ["MetricsLog"]


class MetricsLog:
    """Rows of metrics appended to `path`: ".csv" -> CSV with `fields` as columns (blank where a row has
    no value), ".json" / ".jsonl" -> one JSON object per line. Appends to an existing file (a resumed run)."""

    def __init__(self, path: str, fields: Sequence[str]):
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".csv", ".json", ".jsonl"):
            raise ValueError(f"log file must end in .csv, .json or .jsonl, got {path!r}")
        self.path, self.fields, self.is_csv = path, tuple(fields), ext == ".csv"
        if self.is_csv and os.path.isfile(path) and os.path.getsize(path) > 0:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            if tuple(header) != self.fields:
                raise ValueError(f"{path} has columns {header}, expected {list(self.fields)}")

    def write(self, row: Mapping[str, object]) -> None:
        unknown = sorted(set(row) - set(self.fields))
        if unknown:
            raise KeyError(f"log row has fields {unknown} outside {list(self.fields)}")
        new_file = not os.path.isfile(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            if self.is_csv:
                writer = csv.DictWriter(f, fieldnames=self.fields)
                if new_file:
                    writer.writeheader()
                writer.writerow({k: _plain(v) for k, v in row.items()})
            else:
                f.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")


def _plain(value):
    """Floats as repr-exact numbers; NaN / inf as strings JSON can carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
