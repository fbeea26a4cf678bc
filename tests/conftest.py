"""Test-wide settings: nothing may be fetched from a model hub, and runs are deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import sigrl  # noqa: F401  (installs the torchvision compatibility shim first)
from sigrl.training import recipe_for, train


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """The tiny recipe trained once on the synthetic shapes (7 epochs = 434 steps, about a minute)."""
    out = tmp_path_factory.mktemp("tiny-run")
    result = train(recipe_for("tiny", out=str(out), progress=False))
    return out, result


@pytest.fixture(scope="session")
def tiny_engines(trained_tiny, tmp_path_factory):
    """The trained tiny checkpoint exported once with ``sigrl export``: (checkpoint path, engine folder)."""
    from sigrl.cli import main

    checkpoint = trained_tiny[0] / "best.pt"
    out = tmp_path_factory.mktemp("tiny-engines")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--config", "tiny"]) == 0
    return checkpoint, out
