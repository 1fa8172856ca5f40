"""Progress bars for long runs: tqdm when installed, else one printed line per step."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def progress(
    iterable: Iterable[T], desc: str, total: Optional[int] = None, disable: bool = False
) -> Iterator[T]:
    """Iterates over ``iterable`` while showing a progress bar on stderr."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True)
        return
    total = total if total is not None else getattr(iterable, "__len__", lambda: None)()
    for i, item in enumerate(iterable):
        if not disable:
            print(f"{desc}: {i + 1}/{total if total is not None else '?'}", file=sys.stderr)
        yield item
