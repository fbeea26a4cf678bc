"""Model registry and factory, open_clip style: configurations are small JSON files chosen by name."""

from __future__ import annotations

import json
import zipfile
from importlib import resources
from pathlib import Path

import open_clip
import torch

from sigrl.data.transforms import Transform, build_transform
from sigrl.model import SigRL, SigRLConfig
from sigrl.registry import CONFIG_PACKAGE, list_models

_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def get_model_config(name: str, **overrides) -> SigRLConfig:
    """The named configuration with ``overrides`` applied (unknown keys are an error)."""
    if name not in list_models():
        raise ValueError(f"unknown model config {name!r}; available: {', '.join(list_models())}")
    values = json.loads(resources.files(CONFIG_PACKAGE).joinpath(f"{name}.json").read_text())
    unknown = set(overrides) - set(SigRLConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown config override(s) for {name!r}: {', '.join(sorted(unknown))}")
    values.update(overrides)
    return SigRLConfig(**values)


def _read_clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """State dict of an open_clip checkpoint (.pt/.bin/.safetensors) or of OpenAI's TorchScript archive."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_torchscript = any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())
        if is_torchscript:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            return {k: v for k, v in state.items() if k not in _OPENAI_EXTRA_KEYS}
    return open_clip.factory.load_state_dict(str(path))


def load_clip_weights(model: SigRL, path: str | Path) -> None:
    """Load pretrained CLIP weights (both towers) from a local file into ``model.clip``.

    Raises FileNotFoundError naming a missing file, ValueError naming a file that does not hold a
    CLIP of this architecture (missing, unexpected or wrongly shaped tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained CLIP weights not found: {path}")
    try:
        state = _read_clip_state_dict(path)
    except Exception as err:
        raise ValueError(f"cannot read CLIP weights from {path}: {err}") from err
    expected = model.clip.state_dict()
    derived_buffers = {name for name, _ in model.clip.named_buffers()} - set(expected)  # e.g. the causal attn_mask
    state = {k: v for k, v in state.items() if k not in derived_buffers}
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s), e.g. {unexpected[:3]}")
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[:3]}")
    if problems:
        raise ValueError(f"{path} does not match this model's CLIP architecture: " + "; ".join(problems))
    model.clip.load_state_dict({k: v.float() for k, v in state.items()})


def apply_freezing(model: SigRL) -> None:
    """Set requires_grad per the config: the text tower is always frozen (CoOp context excepted);
    with ``freeze_vision_blocks`` = n > 0, conv1, the embeddings, ln_pre and ViT blocks 0..n-1 are frozen.
    Without SVFR (``use_svfr`` false, the MKT baseline) GMC, SDA and VFR take no part in the score, so
    they are frozen too: no optimiser state for them, and DDP finds no unused trainable parameter."""
    model.requires_grad_(True)
    visual = model.clip.visual
    for name, param in model.clip.named_parameters():
        if not name.startswith("visual."):
            param.requires_grad_(False)  # text tower and logit_scale
    blocks = model.config.freeze_vision_blocks
    if blocks > 0:
        for module in (visual.conv1, visual.ln_pre, *visual.transformer.resblocks[:blocks]):
            module.requires_grad_(False)
        visual.class_embedding.requires_grad_(False)
        visual.positional_embedding.requires_grad_(False)
    if not model.config.use_svfr:
        model.gmc.requires_grad_(False)
        model.svfr.requires_grad_(False)


def create_model(name: str, pretrained: str | Path | None = None, **overrides) -> SigRL:
    """Build the named SigRL configuration in eval mode, optionally with pretrained CLIP weights.

    ``name`` is one of :func:`list_models` (``tiny``, ``vit-b16``, and their SVFR-less MKT baselines
    ``mkt-tiny``, ``mkt-vit-b16``); ``overrides`` replace config fields.
    """
    model = SigRL(get_model_config(name, **overrides))
    model.config_name = name
    if pretrained is not None:
        load_clip_weights(model, pretrained)
    apply_freezing(model)
    return model.eval()


def create_model_and_transforms(name: str, pretrained: str | Path | None = None,
                                **overrides) -> tuple[SigRL, Transform, Transform]:
    """open_clip's habit: the model of :func:`create_model` with its train and eval image transforms.

    Both transforms take a PIL RGB image and return the normalised FloatTensor[3, S, S] the model
    expects (S = the config's image size, mean/std from the config): the training one is the recipe's
    augmentation (random resized crop, flip, RandAugment), the eval one resize + centre crop, the same
    preprocessing evaluation and the served ``preprocess`` model use.
    """
    model = create_model(name, pretrained, **overrides)
    config = model.config
    size = config.vision_cfg["image_size"]
    return (model, build_transform(size, True, config.image_mean, config.image_std),
            build_transform(size, False, config.image_mean, config.image_std))
