"""The Python API in open_clip's habit: the model with its transforms, a lazily loaded namespace, py.typed."""

from importlib import resources

import torch
from PIL import Image

import sigrl
from sigrl.data import build_transform


def test_create_model_and_transforms_gives_the_model_and_its_preprocessing():
    model, train_transform, eval_transform = sigrl.create_model_and_transforms("tiny", class_chunk=8)
    assert isinstance(model, sigrl.SigRL) and not model.training and model.svfr.class_chunk == 8
    image = Image.new("RGB", (90, 70), (200, 30, 30))
    pixels = eval_transform(image)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32
    assert torch.equal(pixels, build_transform(64, False)(image))  # evaluation's and serving's transform
    torch.manual_seed(0)
    assert train_transform(image).shape == (3, 64, 64)
    with torch.no_grad():
        scores = model(pixels[None], sigrl.tokenize(["red", "circle"]))
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()


def test_the_namespace_lists_the_api_and_ships_py_typed():
    assert {"create_model", "create_model_and_transforms", "load_checkpoint", "tokenize", "metrics",
            "__version__"} <= set(sigrl.__all__) <= set(dir(sigrl))
    assert all(getattr(sigrl, name) is not None for name in sigrl.__all__)
    assert resources.files("sigrl").joinpath("py.typed").is_file()
