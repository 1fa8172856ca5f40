"""Ray Tune search over masker hyperparameters (the reference's ``benchmark/raytune``).

    from ray import tune
    from sparse_attention_hub.benchmark.raytune import search_optimal_config

    template = ResearchAttentionConfig([
        SinkMaskerConfig(4),
        LocalMaskerConfig(16, search_space={"window_size": tune.grid_search([8, 16, 32])}),
    ])
    best = search_optimal_config("meta-llama/Llama-3.1-8B-Instruct", "ruler32k/vt", template,
                                 objective="sparsity_10",
                                 generation_kwargs={"max_new_tokens": 32, "do_sample": False},
                                 request_kwargs={"max_requests": 4})
    best.sparse_config, best.score   # also in ./optimal_configs/<model>_<task>_<name>.json

Run the full benchmarks of the best configurations afterwards (phase 2) with
``BenchmarkExecutor(backend="ray")``. Command line: ``python -m
sparse_attention_hub.benchmark.raytune --help``. Needs ``pip install 'ray[tune]'``.
"""

from .objectives import (
    DENSE_SCORE,
    FAILURE_SCORE,
    OBJECTIVE_FUNCTIONS,
    create_sparsity_objective,
    default_objective,
    get_objective,
)
from .search import (
    SEARCH_MICRO_METRICS,
    OptimalConfig,
    TrialRunner,
    attention_summary,
    config_to_dict,
    load_optimal_config,
    masker_list_name,
    search_optimal_config,
)
from .search_space import CompositeConfigOptimizer

__all__ = [
    "CompositeConfigOptimizer",
    "DENSE_SCORE",
    "FAILURE_SCORE",
    "OBJECTIVE_FUNCTIONS",
    "OptimalConfig",
    "SEARCH_MICRO_METRICS",
    "TrialRunner",
    "attention_summary",
    "config_to_dict",
    "create_sparsity_objective",
    "default_objective",
    "get_objective",
    "load_optimal_config",
    "masker_list_name",
    "search_optimal_config",
]
