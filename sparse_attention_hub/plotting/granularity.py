"""Granularity of a plot (the reference's enum)."""

from enum import Enum


class Granularity(Enum):
    PER_TOKEN = "per_token"
    PER_HEAD = "per_head"
    PER_LAYER = "per_layer"
