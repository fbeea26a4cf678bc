"""Training recipes: the paper's for ``vit-b16`` and a CPU-sized one for ``tiny`` (docs/training.md).

A recipe is a complete :class:`TrainConfig`, learning-rate schedule included. The MKT baselines
(``mkt-tiny``, ``mkt-vit-b16``: SVFR off) train with the recipe of the model they ablate, so that
the two runs differ only in the model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from sigrl.losses import SPML_HYPERPARAMETERS
from sigrl.registry import LOSSES

SCHEDULES = ("cosine", "constant")
# Datasets whose reader gives one observed positive per training image. NUS-WIDE's reader returns the full
# ±1/0 labels, so SPML losses there would silently train on more than one positive.
SPML_DATASETS = ("coco", "voc")
# Baseline configurations and the model whose recipe they share.
BASELINE_OF = {"mkt-tiny": "tiny", "mkt-vit-b16": "vit-b16"}


@dataclass
class TrainConfig:
    """Everything one training run needs; ``sigrl train`` flags override the recipe's values."""

    model: str = "tiny"
    data: str = "synthetic"
    data_root: str | None = None
    image_root: str | None = None  # COCO/VOC: where the relative image paths point (default: data_root)
    out: str = "runs/tiny"
    pretrained: str | None = None  # local CLIP weights (open_clip checkpoint or OpenAI TorchScript archive)
    random_init: bool = False  # True: training without `pretrained` starts from random weights on purpose
    epochs: int = 7
    max_steps: int | None = None  # stop early after this many steps in total; the schedule still spans `epochs`
    batch_size: int = 32  # global batch, split evenly across DDP processes
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 3e-3
    schedule: str = "cosine"  # cosine: linear warm-up, then cosine per step to min_lr; constant: warm-up, then lr
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
    eval_precision: str = "fp32"  # validation scoring: fp32 (the paper's protocol) or bf16 (autocast)
    val_fraction: float | None = None  # held-out share of the training images (None: the dataset's; 0: none)
    synthetic_train_images: int | None = None  # size of the synthetic training set (None = its default)
    device: str | None = None  # default: cuda (this process's local rank) if available, else cpu
    progress: bool = True  # progress bar in a terminal, else a line every `log_every` steps; off: neither
    log_every: int = 50

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


RECIPES: dict[str, TrainConfig] = {
    # Measured on 2-core CPUs: AdamW 3e-3, batch 32, learnable ranking scale, small distillation weight
    # (a random teacher has nothing to teach). 7 epochs = 434 steps, ~1 minute. No pretrained weights exist.
    "tiny": TrainConfig(random_init=True),
    # The paper's zero-shot recipe (spec §3): AdamW 1e-4 → 1e-7, 2 warm-up epochs then cosine per
    # iteration, weight decay 0.05, layer-wise lr decay 0.65, batch 32, 20 epochs, seed 42, rank + L1.
    "vit-b16": TrainConfig(model="vit-b16", data="nus-wide", out="runs/vit-b16", epochs=20, lr=1e-4,
                           min_lr=1e-7, warmup_epochs=2, weight_decay=0.05, layer_decay=0.65,
                           distill_weight=1.0, rank_scale=None, grad_checkpointing=True, workers=8),
}
# The paper's single-positive recipe (SPML): Adam at a constant lr 1e-5 (no warm-up, no decay, as in the
# reference code), 10 epochs; α/β/warm-up come per dataset.
RECIPES["vit-b16-spml"] = replace(RECIPES["vit-b16"], data="coco", optimizer="adam", lr=1e-5, schedule="constant",
                                  epochs=10, warmup_epochs=0, layer_decay=1.0, weight_decay=0.0)


def recipe_for(model: str, loss: str = "rank", data: str | None = None, **overrides) -> TrainConfig:
    """The recipe for ``model`` (``<model>-spml`` where one exists and ``loss`` is an SPML loss), with the
    SPML α/β/warm-up of ``data``. ``overrides`` that are not None win over both. The result is checked
    with :func:`check_config`."""
    family = BASELINE_OF.get(model, model)
    if family not in RECIPES:
        raise ValueError(f"no training recipe for model {model!r}; available: {', '.join([*RECIPES, *BASELINE_OF])}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    spml = loss != "rank"
    base = RECIPES.get(f"{family}-spml", RECIPES[family]) if spml else RECIPES[family]
    config = replace(base, model=model, loss=loss, data=data or base.data)
    if spml:
        _check_spml_data(config)
        values = SPML_HYPERPARAMETERS[config.data]
        config = replace(config, spml_alpha=values.alpha, spml_beta=values.beta, spml_warmup=values.warm_up)
    unknown = set(overrides) - TrainConfig.field_names()
    if unknown:
        raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    check_config(config)
    return config


def _check_spml_data(cfg: TrainConfig) -> None:
    if cfg.data not in SPML_DATASETS:
        detail = (": its reader returns full labels, not one observed positive per image"
                  if cfg.data == "nus-wide" else "")
        raise ValueError(f"SPML losses need single-positive data ({', '.join(SPML_DATASETS)}), not {cfg.data!r}"
                         f"{detail}; train NUS-WIDE with --loss rank")


def check_config(cfg: TrainConfig, resume: bool = False) -> None:
    """Refuse settings that would train something other than what was asked for (ValueError naming the option).

    On ``resume`` the weights come from ``last.pt``, so the choice of initial weights is not checked."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {cfg.schedule!r}; expected one of {SCHEDULES}")
    if cfg.eval_precision not in ("fp32", "bf16"):
        raise ValueError(f"eval precision must be fp32 or bf16, got {cfg.eval_precision!r}")
    if cfg.val_fraction is not None and not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"val fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.data == "synthetic" and cfg.val_fraction:
        raise ValueError("the synthetic dataset has its own validation images: val fraction applies to "
                         "nus-wide, coco and voc (0 turns validation off everywhere)")
    if cfg.loss != "rank":
        _check_spml_data(cfg)
    if cfg.pretrained is None and not cfg.random_init and not resume:
        raise ValueError(f"{cfg.model} trains from CLIP weights: pass --pretrained PATH (local open_clip or "
                         "OpenAI file), or --random-init to train from random weights (and a random teacher) "
                         "on purpose")
