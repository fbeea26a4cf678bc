"""A model configuration as data (``sigrl/model_configs/<name>.json``), torch-free.

Exported engines record their configuration, and the served models and the engine tools read it back
without torch; the model itself (:mod:`sigrl.model`) is built from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

DEFAULT_TEMPLATE = "There is a {} in the scene."


@dataclass
class SigRLConfig:
    """Architecture of one named configuration (``sigrl/model_configs/<name>.json``)."""

    embed_dim: int
    vision_cfg: dict
    text_cfg: dict
    quick_gelu: bool = False
    prompt_template: str = DEFAULT_TEMPLATE
    coop_n_ctx: int = 0  # > 0: learnable CoOp context vectors replace the template words
    gmc_heads: int = 4
    gmc_head_dim: int = 32
    gmc_dropout: float = 0.3
    gmc_node_chunk: int = 64
    top_k: int = 16
    class_chunk: int = 32
    freeze_vision_blocks: int = 10  # > 0 also freezes conv1, the embeddings and ln_pre
    use_svfr: bool = True  # False: the MKT baseline (paper Table IV), the local branch scores V, GMC unused
    image_mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def to_dict(self) -> dict:
        return asdict(self)
