"""Training recipes: the paper's for ``vit-b16`` and a CPU-sized one for ``tiny`` (docs/tiny-training.md)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from sigrl.losses import SPML_HYPERPARAMETERS
from sigrl.registry import LOSSES


@dataclass
class TrainConfig:
    """Everything one training run needs; ``sigrl train`` flags override the recipe's values."""

    model: str = "tiny"
    data: str = "synthetic"
    data_root: str | None = None
    image_root: str | None = None  # COCO/VOC: where the relative image paths point (default: data_root)
    out: str = "runs/tiny"
    pretrained: str | None = None  # local CLIP weights (open_clip checkpoint or OpenAI TorchScript archive)
    epochs: int = 7
    max_steps: int | None = None  # stop early after this many steps in total; the schedule still spans `epochs`
    batch_size: int = 32  # global batch, split evenly across DDP processes
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 3e-3
    min_lr: float = 1e-7
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    loss: str = "rank"  # rank (zero-shot, BiAM ranking) or an SPML loss: an | iun | em | em_apl
    distill_weight: float = 0.1  # weight of the L1 distillation to the frozen CLIP teacher (0 = no teacher)
    rank_scale: float | None = 10.0  # learnable score scale inside the ranking loss (None = faithful, no scale)
    spml_alpha: float = 0.1
    spml_beta: float = 0.0
    spml_warmup: int = 1
    spml_logit_scale: float = 1.0
    coop_n_ctx: int = 0  # > 0: learn CoOp context vectors only (image side and heads frozen)
    grad_checkpointing: bool = False
    class_chunk: int | None = None  # SVFR class chunk (None = the model config's)
    amp: bool = True  # bf16 autocast on CUDA
    seed: int = 42
    workers: int = 0
    eval_batch_size: int = 64
    synthetic_train_images: int | None = None  # size of the synthetic training set (None = its default)
    device: str | None = None  # default: cuda (this process's local rank) if available, else cpu
    progress: bool = True  # progress bar in a terminal, else a line every `log_every` steps; off: neither
    log_every: int = 50

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


RECIPES: dict[str, TrainConfig] = {
    # Measured on 2-core CPUs (docs/tiny-training.md): AdamW 3e-3, batch 32, learnable ranking scale,
    # small distillation weight (a random teacher has nothing to teach). 7 epochs = 434 steps, ~1 minute.
    "tiny": TrainConfig(),
    # The paper's zero-shot recipe (spec §3): AdamW 1e-4 → 1e-7, 2 warm-up epochs then cosine per
    # iteration, weight decay 0.05, layer-wise lr decay 0.65, batch 32, 20 epochs, seed 42, rank + L1.
    "vit-b16": TrainConfig(model="vit-b16", data="nus-wide", out="runs/vit-b16", epochs=20, lr=1e-4,
                           min_lr=1e-7, warmup_epochs=2, weight_decay=0.05, layer_decay=0.65,
                           distill_weight=1.0, rank_scale=None, grad_checkpointing=True, workers=8),
}
# The paper's single-positive recipe (spec §3, SPML): Adam lr 1e-5, 10 epochs; α/β/warm-up come per dataset.
RECIPES["vit-b16-spml"] = replace(RECIPES["vit-b16"], data="coco", optimizer="adam", lr=1e-5, epochs=10,
                                  warmup_epochs=0, layer_decay=1.0, weight_decay=0.0)


def recipe_for(model: str, loss: str = "rank", data: str | None = None, **overrides) -> TrainConfig:
    """The recipe for ``model`` (``<model>-spml`` where one exists and ``loss`` is an SPML loss), with the
    spec's per-dataset SPML α/β/warm-up for ``data``. ``overrides`` that are not None win over both."""
    if model not in RECIPES:
        raise ValueError(f"no training recipe for model {model!r}; available: {', '.join(RECIPES)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    spml = loss != "rank"
    base = RECIPES.get(f"{model}-spml", RECIPES[model]) if spml else RECIPES[model]
    config = replace(base, loss=loss, **({"data": data} if data else {}))
    if spml:
        if config.data not in SPML_HYPERPARAMETERS:
            raise ValueError(f"SPML losses need single-positive data ({', '.join(SPML_HYPERPARAMETERS)}), "
                             f"not {config.data!r}")
        values = SPML_HYPERPARAMETERS[config.data]
        config = replace(config, spml_alpha=values["alpha"], spml_beta=values["beta"], spml_warmup=values["warm_up"])
    unknown = set(overrides) - TrainConfig.field_names()
    if unknown:
        raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
