"""Fixtures of the compression tests (builders live in ``compression_helpers``, a uniquely named module)."""

from __future__ import annotations

import pytest
import torch
from compression_helpers import build_tiny_llava, make_pixels
from transformers import LlavaForConditionalGeneration

import llava.compression as vtc


@pytest.fixture(scope="session")
def shared_model() -> LlavaForConditionalGeneration:
    return build_tiny_llava(0)


@pytest.fixture
def model(shared_model):
    """The shared tiny model, guaranteed unmodified before and after the test."""
    vtc.remove(shared_model)
    yield shared_model
    vtc.remove(shared_model)


@pytest.fixture(scope="session")
def pixels3() -> torch.Tensor:
    return make_pixels(3, seed=1)
