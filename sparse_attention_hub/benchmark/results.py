"""Result files of one benchmark run and the stable configuration hash behind resumability.

Layout of a result directory: ``raw_results.csv`` (one row per question, every dataset column
plus ``predicted_answer``; lists and dicts as JSON), ``metrics.json``, ``config.json`` (written
last: its presence with the right ``config_hash`` marks the run complete) and, when micro
metrics are on, ``micro_metrics.jsonl``.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

RAW_RESULTS = "raw_results.csv"
METRICS = "metrics.json"
CONFIG = "config.json"
MICRO_METRICS = "micro_metrics.jsonl"
RESULT_FILES = (RAW_RESULTS, METRICS, CONFIG, MICRO_METRICS)


def make_serializable(obj: Any) -> Any:
    """A JSON-ready, deterministic form of ``obj``: dataclasses become ``{"type": qualified
    class name, **fields}``, dtypes and other objects their ``str``, tuples and sets lists."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, enum.Enum):
        return obj.name
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: make_serializable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"type": f"{type(obj).__module__}.{type(obj).__qualname__}", **fields}
    if isinstance(obj, dict):
        return {str(k): make_serializable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [make_serializable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((make_serializable(v) for v in obj), key=repr)
    if isinstance(obj, Path):
        return str(obj)
    text = str(obj)
    if " at 0x" in text and hasattr(obj, "__dict__"):
        # Objects whose str is their address (e.g. Ray Tune domains): their type and state,
        # so that the same configuration hashes the same in every process.
        state = {k: make_serializable(v) for k, v in sorted(vars(obj).items())}
        return {"type": f"{type(obj).__module__}.{type(obj).__qualname__}", **state}
    return text


def config_hash(config: Dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``config`` (stable across processes and runs)."""
    text = json.dumps(make_serializable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_json(path: Path, data: Dict[str, Any]) -> None:
    path.write_text(json.dumps(make_serializable(data), indent=2, sort_keys=False) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple, dict, set)):
        return json.dumps(make_serializable(value), ensure_ascii=False)
    return "" if value is None else str(value)


def write_raw_results(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    """One CSV row per dataset row; columns in order of first appearance."""
    columns: List[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def read_raw_results(path: Path) -> List[Dict[str, str]]:
    """The rows of a ``raw_results.csv`` (every cell a string, as written)."""
    csv.field_size_limit(2**31 - 1)  # long contexts exceed the 128 KiB default
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
