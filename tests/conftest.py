"""Shared test fixtures: the safari fixture folder and small seeded models."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # determinism and fairness on shared 2-core CI machines

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"safari fixtures not found at {FIXTURES} (they live in ../shared beside the checkout)")
    return FIXTURES


def tiny_hyena_config(**over) -> dict:
    cfg = dict(kind="hyena", vocab_size=10, d_model=8, n_layers=2, order=2, causal=True,
               l_max=16, filter_order=16, embed_dropout=0.0)
    cfg.update(over)
    return cfg


def jitter_(model: torch.nn.Module, scale: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """Move every parameter off its init so that no gate or filter is trivially small."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model
