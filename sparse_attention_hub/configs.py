"""Named sparse attention configurations and loading configurations from JSON/YAML files.

File format: ``{"maskers": [{"type": "SinkMaskerConfig", "sink_size": 128}, ...]}`` where
``type`` names a masker config class exported by ``research_attention.maskers``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .sparse_attention.research_attention import ResearchAttentionConfig, maskers

#: Sink 4 + local 5% of the keys: the base of every named sparse configuration (file entries).
SINK_LOCAL: List[Dict[str, Any]] = [
    {"type": "SinkMaskerConfig", "sink_size": 4},
    {"type": "LocalMaskerConfig", "window_size": 0.05},
]
#: What each named family adds to :data:`SINK_LOCAL` (file entries; about 5% of the keys, and no
#: weight or channel files needed).
FAMILY_MASKERS: Dict[str, List[Dict[str, Any]]] = {
    "sink_local": [],
    "oracle_topk": [{"type": "OracleTopKConfig", "heavy_size": 0.05}],
    "oracle_topp": [{"type": "OracleTopPMaskerConfig", "top_p": 0.9}],
    "quest": [{"type": "QuestTopKMaskerConfig", "heavy_size": 0.05, "page_size": 16}],
    "pq_cache": [{"type": "PQCacheConfig", "heavy_size": 0.05, "pq_sub_dim": 8, "pq_bits": 6}],
    "random_sampling": [{"type": "RandomSamplingMaskerConfig", "sampling_rate": 0.05, "seed": 0}],
    "magic_pig": [{"type": "MagicPigConfig", "lsh_l": 16, "lsh_k": 8, "seed": 0}],
    "adaptive_sampling": [
        {"type": "OracleTopKConfig", "heavy_size": 0.025},
        {
            "type": "AdaptiveSamplingMaskerConfig",
            "base_rate_sampling": 0.025,
            "epsilon": 0.25,
            "delta": 0.25,
            "init_offset": 4,
            "local_offset": 0.05,
            "seed": 0,
        },
    ],
}


def _family(name: str) -> Callable[[], ResearchAttentionConfig]:
    return lambda: config_from_dict({"maskers": SINK_LOCAL + FAMILY_MASKERS[name]})


NAMED: Dict[str, Callable[[], Optional[ResearchAttentionConfig]]] = {
    "dense": lambda: None,
    **{name: _family(name) for name in FAMILY_MASKERS},
}


def _masker_config_classes() -> Dict[str, type]:
    classes: Dict[str, type] = {}
    modules = (
        maskers.fixed,
        maskers.fixed.implementations,
        maskers.sampling,
        maskers.sampling.implementations,
    )
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if isinstance(obj, type) and name.endswith("Config"):
                classes[name] = obj
    return classes


def config_from_dict(data: Dict[str, Any]) -> ResearchAttentionConfig:
    """Builds a ResearchAttentionConfig from ``{"maskers": [{"type": ..., **fields}]}``."""
    if not isinstance(data, dict) or not isinstance(data.get("maskers"), list):
        raise ValueError('a configuration must be a mapping with a "maskers" list')
    classes = _masker_config_classes()
    built: List[Any] = []
    for entry in data["maskers"]:
        fields = dict(entry)
        kind = fields.pop("type", None)
        if kind not in classes:
            raise ValueError(f"unknown masker config type {kind!r}; known: {sorted(classes)}")
        built.append(classes[kind](**fields))
    return ResearchAttentionConfig(built)


def load_config(name_or_path: str) -> Optional[ResearchAttentionConfig]:
    """A named configuration (see ``NAMED``) or one read from a .json/.yaml file."""
    if name_or_path in NAMED:
        return NAMED[name_or_path]()
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"{name_or_path!r} is neither a named configuration {sorted(NAMED)} nor a file"
        )
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml  # optional dependency

        return config_from_dict(yaml.safe_load(text))
    return config_from_dict(json.loads(text))
