"""The search space of a research attention configuration, from its maskers' ``search_space``.

Each masker config may carry ``search_space = {field: domain}``, where a domain is a Ray Tune
one (``tune.grid_search([...])``, which is the plain dict ``{"grid_search": [...]}``,
``tune.choice``, ``tune.uniform``, ...). A parameter of the search is named
``<MaskerConfigClass>_<field>`` (e.g. ``LocalMaskerConfig_window_size``), so a masker class
with a search space may appear only once in the configuration.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

from ...sparse_attention.research_attention import ResearchAttentionConfig


class CompositeConfigOptimizer:
    """Turns a template configuration into a search space, and a point of it into a config.

    The maskers' other fields (and those without a search space) keep the template's values.
    """

    def __init__(self, template: ResearchAttentionConfig) -> None:
        if not isinstance(template, ResearchAttentionConfig):
            raise TypeError(
                f"template must be a ResearchAttentionConfig, got {type(template).__name__}"
            )
        searched = [m for m in template.masker_configs if getattr(m, "search_space", None)]
        names = [type(m).__name__ for m in searched]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"masker classes with a search_space must be unique: {duplicates}")
        if not searched:
            raise ValueError("no masker of the template has a non-empty search_space")
        for masker in searched:
            fields = {f.name for f in dataclasses.fields(masker)} - {"search_space"}
            unknown = sorted(set(masker.search_space) - fields)
            if unknown:
                raise ValueError(
                    f"{type(masker).__name__}.search_space names {unknown}, not fields of it"
                )
        self.template = template

    def create_search_space(self) -> Dict[str, Any]:
        """``{"<MaskerConfigClass>_<field>": domain}`` for Ray Tune's ``param_space``."""
        return {
            f"{type(masker).__name__}_{name}": domain
            for masker in self.template.masker_configs
            for name, domain in getattr(masker, "search_space", {}).items()
        }

    def create_config_from_params(self, params: Dict[str, Any]) -> ResearchAttentionConfig:
        """The template at the point ``params`` (keys from :meth:`create_search_space`; others
        are ignored): a point, so its maskers' search spaces are empty. Each masker config is
        rebuilt, so its validation runs."""
        maskers = []
        for masker in self.template.masker_configs:
            if not hasattr(masker, "search_space"):
                maskers.append(masker)
                continue
            prefix = f"{type(masker).__name__}_"
            updates = {
                name: params[prefix + name]
                for name in masker.search_space
                if prefix + name in params
            }
            maskers.append(dataclasses.replace(masker, search_space={}, **updates))
        return dataclasses.replace(self.template, masker_configs=maskers)
