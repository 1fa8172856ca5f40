"""Shared pytest fixtures: the devices to run on (CUDA tests carry the `gpu` mark)."""

import pytest
import torch

import sparse_attention_hub  # noqa: F401  (registers torch.ops.sah.*)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param
