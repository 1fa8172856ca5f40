"""Benchmark families: each module registers its benchmarks (loader + official scoring)."""

from . import (
    aime,
    infinite_bench,
    longbench,
    longbenchv2,
    loogle,
    mock,
    ruler,
    synthetic,
    zero_scrolls,
)
from .aime import AIME2024, AIME2025
from .infinite_bench import InfiniteBench
from .longbench import LongBench
from .longbenchv2 import LongBenchv2
from .loogle import Loogle
from .mock import MockBenchmark
from .ruler import Ruler, Ruler16K, Ruler32K
from .synthetic import SyntheticRuler, generate_sample
from .zero_scrolls import ZeroScrolls

__all__ = [
    "AIME2024",
    "AIME2025",
    "InfiniteBench",
    "LongBench",
    "LongBenchv2",
    "Loogle",
    "MockBenchmark",
    "Ruler",
    "Ruler16K",
    "Ruler32K",
    "SyntheticRuler",
    "ZeroScrolls",
    "aime",
    "generate_sample",
    "infinite_bench",
    "longbench",
    "longbenchv2",
    "loogle",
    "mock",
    "ruler",
    "synthetic",
    "zero_scrolls",
]
