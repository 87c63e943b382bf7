"""Fixtures shared by the whole-model engine tests: the model zoo, EfficientNet-Lite0 and a small ResNet-50."""

import pytest
import torch

import relprop
from engine_checks import ZooCache
from model_init import randomise_batch_norms


@pytest.fixture(scope="module")
def zoo():
    cache = ZooCache()
    yield cache
    cache._models.clear()


@pytest.fixture(scope="module")
def lite0():
    model, preprocess = relprop.load_model("efficientnet_lite0")
    return model.eval(), preprocess


@pytest.fixture(scope="module")
def resnet50_small():
    torch.manual_seed(0)
    model, _ = relprop.load_model("resnet50")
    return randomise_batch_norms(model).eval()
