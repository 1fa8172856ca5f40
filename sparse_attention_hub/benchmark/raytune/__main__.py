"""Command line of the masker hyperparameter search (the reference's run_optimize_configs.py).

    python -m sparse_attention_hub.benchmark.raytune --model MODEL --task ruler32k/vt \\
        --config search.json --objective sparsity_10 --num-samples 1 \\
        --search-max-new-tokens 32 --search-max-context-length 32000 --search-max-requests 4

``--config`` is a named configuration or a JSON/YAML file (``configs.load_config``); each
masker's ``search_space`` (``{"field": {"grid_search": [...]}}`` in the file, or the class
default) is searched.
"""

from __future__ import annotations

import argparse
import json
from typing import List, Optional

from ...configs import load_config
from ..executor_config import AdapterConfig
from .objectives import OBJECTIVE_FUNCTIONS
from .search import search_optimal_config


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="hub name or local model folder")
    parser.add_argument("--task", required=True, help="<benchmark>/<subset>, e.g. ruler32k/vt")
    parser.add_argument("--config", required=True, help="named configuration or JSON/YAML file")
    parser.add_argument("--masker-name", default=None, help="name of the configuration")
    parser.add_argument("--objective", default="default", choices=sorted(OBJECTIVE_FUNCTIONS))
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--search-max-new-tokens", type=int, default=32)
    parser.add_argument("--search-max-context-length", type=int, default=None)
    parser.add_argument("--search-max-requests", type=int, default=None)
    parser.add_argument("--actors-per-gpu", type=int, default=1)
    parser.add_argument("--optimal-configs-dir", default="./optimal_configs")
    parser.add_argument("--ray-results-dir", default="./ray_results")
    parser.add_argument("--ray-address", default=None, help="None: local Ray; 'auto': cluster")
    parser.add_argument("--model-kwargs", type=json.loads, default={}, help="JSON object")
    parser.add_argument("--benchmark-kwargs", type=json.loads, default={}, help="JSON object")
    parser.add_argument("--force-search", action="store_true")
    args = parser.parse_args(argv)

    request_kwargs = {
        "max_context_length": args.search_max_context_length,
        "max_requests": args.search_max_requests,
    }
    optimal = search_optimal_config(
        args.model,
        args.task,
        load_config(args.config),
        masker_name=args.masker_name,
        objective=args.objective,
        num_samples=args.num_samples,
        adapter_config=AdapterConfig(model_kwargs=args.model_kwargs),
        benchmark_kwargs=args.benchmark_kwargs,
        generation_kwargs={"max_new_tokens": args.search_max_new_tokens, "do_sample": False},
        request_kwargs={k: v for k, v in request_kwargs.items() if v is not None},
        actors_per_gpu=args.actors_per_gpu,
        optimal_configs_dir=args.optimal_configs_dir,
        ray_results_dir=args.ray_results_dir,
        force_search=args.force_search,
        ray_address=args.ray_address,
    )
    print(
        f"best {optimal.masker_name}: score {optimal.score:.4f} (error {optimal.error:.4f}, "
        f"density {optimal.density:.4f}) with {optimal.hyperparams}"
    )


if __name__ == "__main__":
    main()
