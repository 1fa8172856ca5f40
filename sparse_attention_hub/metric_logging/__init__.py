"""Micro metrics of sparse attention (density, output error), logged as JSONL."""

from .attention_metrics import DENSITY, OUTPUT_ERROR, attention_density, attention_output_error
from .logger import FILE_NAME, LogEvent, MicroMetricLogger

__all__ = [
    "DENSITY",
    "FILE_NAME",
    "LogEvent",
    "MicroMetricLogger",
    "OUTPUT_ERROR",
    "attention_density",
    "attention_output_error",
]
