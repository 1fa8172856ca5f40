"""Reading a benchmark subset from local files (or, when installed, the HF ``datasets`` cache).

A subset ``<name>`` of a benchmark is looked up as ``<data_dir>/<name>.jsonl``, ``.json`` (a
list of objects) or ``.csv`` (cells holding JSON lists/objects are decoded). ``data_dir``
defaults to ``$SAH_DATA_DIR/<benchmark_name>`` when that variable is set.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

SUFFIXES = (".jsonl", ".json", ".csv")
DATA_DIR_ENV = "SAH_DATA_DIR"


def default_data_dir(benchmark_name: str) -> Optional[Path]:
    """``$SAH_DATA_DIR/<benchmark_name>`` if the variable is set, else None."""
    root = os.environ.get(DATA_DIR_ENV)
    return Path(root) / benchmark_name if root else None


def find_subset_file(data_dir: Path, subset: str) -> Optional[Path]:
    for suffix in SUFFIXES:
        path = data_dir / f"{subset}{suffix}"
        if path.is_file():
            return path
    return None


def _decode_cell(text: str) -> Any:
    if text[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def read_rows(path: Path) -> List[Dict[str, Any]]:
    """The rows of a .jsonl, .json or .csv file, as dicts."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of objects, got {type(data).__name__}")
        return data
    if path.suffix == ".csv":
        csv.field_size_limit(2**31 - 1)
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: _decode_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]
    raise ValueError(f"path must end in one of {SUFFIXES}, got {path.name!r}")


def load_subset(
    data_dir: Optional[Path],
    subset: str,
    dataset_id: str,
    hub_config: Optional[str],
    hub_split: str = "test",
) -> List[Dict[str, Any]]:
    """Rows of ``subset`` from ``data_dir`` if given, else from HF ``datasets`` (its cache, or
    the hub when online) as ``load_dataset(dataset_id, hub_config, split=hub_split)``."""
    if data_dir is not None:
        path = find_subset_file(Path(data_dir), subset)
        if path is None:
            raise FileNotFoundError(
                f"data_dir {str(data_dir)!r} has no {subset}{{{','.join(SUFFIXES)}}} file"
            )
        return read_rows(path)
    try:
        from datasets import load_dataset
    except ImportError as error:
        raise FileNotFoundError(
            f"no data for subset {subset!r}: pass data_dir=<folder with {subset}.jsonl> "
            f"(or set ${DATA_DIR_ENV}), or install `datasets` to read {dataset_id!r}"
        ) from error
    return [dict(row) for row in load_dataset(dataset_id, hub_config, split=hub_split)]
