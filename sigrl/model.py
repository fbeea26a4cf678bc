"""The SigRL model: CLIP towers + GMC (text side) + SVFR (image side), composed by ``forward``.

The two deployable halves are methods so that export can trace exactly them:
``encode_labels(token_ids) -> (label_emb, graph_emb)`` once per vocabulary, and
``score_images(images, label_emb, graph_emb) -> scores`` per image batch.
"""

from __future__ import annotations

import copy
from typing import Literal, overload

import open_clip
import torch
from torch import nn

from sigrl.config import SigRLConfig
from sigrl.gmc import LabelGraph
from sigrl.svfr import SemanticReconstruction
from sigrl.tokenizer import coop_template, tokenize, trim_token_ids


class PromptContext(nn.Module):
    """CoOp: n_ctx learnable word vectors that take the place of the template words."""

    def __init__(self, n_ctx: int, width: int) -> None:
        super().__init__()
        self.vectors = nn.Parameter(torch.randn(n_ctx, width) * 0.02)

    def forward(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        n_ctx = self.vectors.shape[0]
        ctx = self.vectors.to(token_embeddings.dtype).expand(token_embeddings.shape[0], -1, -1)
        return torch.cat([token_embeddings[:, :1], ctx, token_embeddings[:, 1 + n_ctx:]], dim=1)


class SigRL(nn.Module):
    """CLIP image/text towers, GMC over the label set and SVFR over patch tokens."""

    def __init__(self, config: SigRLConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = open_clip.CLIP(config.embed_dim, config.vision_cfg, config.text_cfg, quick_gelu=config.quick_gelu)
        width = self.clip.token_embedding.embedding_dim
        self.prompt_context = PromptContext(config.coop_n_ctx, width) if config.coop_n_ctx > 0 else None
        self.gmc = LabelGraph(config.embed_dim, config.gmc_heads, config.gmc_head_dim, config.gmc_dropout,
                              config.gmc_node_chunk)
        self.svfr = SemanticReconstruction(config.embed_dim, config.top_k, config.class_chunk, config.use_svfr)
        self.vocabulary: list[str] | None = None  # set by load_checkpoint: the labels it was trained on
        self.config_name: str | None = None  # set by create_model: the registry name checkpoints record

    # ----------------------------------------------------------------------------- text side
    @property
    def prompt_template(self) -> str:
        """The template label names go into: the configured one, or CoOp's placeholders."""
        if self.prompt_context is not None:
            return coop_template(self.prompt_context.vectors.shape[0])
        return self.config.prompt_template

    def tokenize(self, label_names: list[str]) -> torch.Tensor:
        """Token ids for ``label_names`` in this model's prompt template."""
        return tokenize(label_names, self.prompt_template)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Label embeddings T (C×D, not normalised): the EOT feature times ``text_projection``.

        Token ids are cut to the longest prompt in the batch (:func:`sigrl.tokenizer.trim_token_ids`):
        with the causal mask, the padding after the EOT token never influences it, so the output is
        identical and much cheaper than length 77.
        """
        return self.encode_tokens(trim_token_ids(token_ids))

    def encode_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """:meth:`encode_text` at the given length L ≤ 77, without data-dependent shapes (exportable)."""
        clip = self.clip
        length = token_ids.shape[1]
        eot = token_ids.argmax(dim=-1)  # the EOT token has the largest id in CLIP's vocabulary
        x = clip.token_embedding(token_ids)
        if self.prompt_context is not None:
            x = self.prompt_context(x)
        x = x + clip.positional_embedding[:length].to(x.dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
        x = clip.ln_final(x)
        x = x.gather(1, eot[:, None, None].expand(-1, 1, x.shape[-1]))[:, 0]  # the EOT token's feature
        if isinstance(clip.text_projection, nn.Linear):
            return clip.text_projection(x)
        return x @ clip.text_projection

    def encode_labels(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text engine: (label_emb T, graph_emb G), both C×D. Depends on the whole ordered vocabulary."""
        label_emb = self.encode_text(token_ids)
        return label_emb, self.gmc(label_emb)

    # ---------------------------------------------------------------------------- image side
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, V): projected class token B×D and projected patch tokens B×P×D, ln_post on all tokens."""
        visual = self.clip.visual
        x = visual.transformer(visual._embeds(images))
        tokens = visual.ln_post(x) @ visual.proj
        return tokens[:, 0], tokens[:, 1:]

    @overload
    def score_images(self, images: torch.Tensor, label_emb: torch.Tensor, graph_emb: torch.Tensor,
                     return_global: Literal[False] = False) -> torch.Tensor: ...
    @overload
    def score_images(self, images: torch.Tensor, label_emb: torch.Tensor, graph_emb: torch.Tensor,
                     return_global: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def score_images(self, images: torch.Tensor, label_emb: torch.Tensor, graph_emb: torch.Tensor,
                     return_global: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    def score_images(self, images: torch.Tensor, label_emb: torch.Tensor, graph_emb: torch.Tensor,
                     return_global: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Image engine: scores B×C against a vocabulary encoded by :meth:`encode_labels`."""
        global_feat, patches = self.encode_image(images)
        scores = self.svfr(global_feat, patches, label_emb, graph_emb)
        return (scores, global_feat) if return_global else scores

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor | None = None, *,
                label_emb: torch.Tensor | None = None,
                return_global: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scores B×C. Pass ``token_ids``, or precomputed ``label_emb`` when the text tower is frozen."""
        if label_emb is None:
            if token_ids is None:
                raise ValueError("forward needs token_ids or label_emb")
            label_emb = self.encode_text(token_ids)
        return self.score_images(images, label_emb, self.gmc(label_emb), return_global=return_global)

    # ------------------------------------------------------------------------------ training
    def make_teacher(self) -> nn.Module:
        """A frozen copy of the current visual tower; its forward is CLIP's projected class token."""
        teacher = copy.deepcopy(self.clip.visual).eval()
        teacher.requires_grad_(False)
        return teacher

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute ViT blocks, GMC node chunks and SVFR class chunks in the backward pass instead of storing them."""
        self.clip.visual.set_grad_checkpointing(enable)
        self.gmc.layer1.grad_checkpointing = self.gmc.layer2.grad_checkpointing = enable
        self.svfr.grad_checkpointing = enable

    def set_class_chunk(self, class_chunk: int) -> None:
        """How many classes SVFR processes at once (memory only: results are identical)."""
        if class_chunk < 1:
            raise ValueError(f"class_chunk must be >= 1, got {class_chunk}")
        self.svfr.class_chunk = class_chunk
