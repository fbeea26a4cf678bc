"""SVFR: semantic decoupling attention (SDA), visual feature reconstruction (VFR) and the score (spec §2.2–2.5).

The two attention stages build B×P×C×D tensors (404 MB per image in fp32 at C = 1006), so both run
over chunks of classes. Every softmax runs over patches p, SDA reduces over p and VFR sums over
classes, so chunking over classes changes nothing but peak memory: SDA chunks are concatenated, VFR
chunks are added up, and the steps that mix classes (the correlation and the score normalisation)
run on the small B×C×D / B×C results after the chunks. With gradient checkpointing on, each chunk
keeps only its inputs for the backward pass and recomputes the rest.

Disabled (``enabled=False``, the MKT baseline of the paper's Table IV), nothing is reconstructed: the
local branch of the score takes the patch tokens V themselves, and G is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sigrl.chunking import run_chunk


class SemanticReconstruction(nn.Module):
    """SDA + correlation + VFR + eq. 13 score for one image batch against one vocabulary."""

    def __init__(self, dim: int, top_k: int = 16, class_chunk: int = 32, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.top_k = top_k
        self.class_chunk = class_chunk
        self.grad_checkpointing = False
        self.sda_proj = nn.Linear(dim, dim)  # FC in eqs. 5–7
        self.fuse = nn.Linear(2 * dim, dim, bias=False)  # [S' ‖ G] → Y
        self.vfr_proj = nn.Linear(dim, dim)  # FC in eqs. 10–11

    def attend(self, proj: nn.Linear, patches: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Softmax over patches of proj(tanh(V ⊙ q)) for a chunk of class queries: B×P×c×D (fp32 at any precision)."""
        logits = proj(torch.tanh(patches[:, :, None, :] * queries[:, None, :, :]))
        return logits.float().softmax(dim=1)

    def sda_chunk(self, patches: torch.Tensor, label_chunk: torch.Tensor) -> torch.Tensor:
        """Category-specific features S (eqs. 5–7) for a chunk of classes (1×c×D): B×c×D."""
        alpha = self.attend(self.sda_proj, patches, label_chunk.expand(patches.shape[0], -1, -1))
        # category-specific features S; multiply-and-sum is ~20x faster than einsum for this layout on CPU
        return (alpha * patches[:, :, None, :]).sum(dim=1)

    def vfr_chunk(self, patches: torch.Tensor, fused_chunk: torch.Tensor) -> torch.Tensor:
        """VFR gate (eqs. 10–11) summed over a chunk of classes: B×P×D."""
        return self.attend(self.vfr_proj, patches, fused_chunk).sum(dim=2)  # Σ_c β over this chunk

    def fuse_classes(self, sda: torch.Tensor, label_emb: torch.Tensor, graph_emb: torch.Tensor) -> torch.Tensor:
        """The step that mixes classes: correlation (eqs. 8–9) on S, then fusion with G → VFR queries B×C×D.

        Per image, K_b = ReLU(S_bᵀ T) with rows L2-normalised and S'_b = S_b K_b. The released code's
        division by batch-wide norms is left out: it couples batch-mates.
        """
        sda = sda.to(label_emb.dtype)  # the softmax islands hand fp32 back; the products run in the model's dtype
        corr = F.normalize((sda.transpose(1, 2) @ label_emb).relu().float(), dim=-1).to(sda.dtype)  # B×D×D
        decoupled = torch.bmm(sda, corr)
        return self.fuse(torch.cat([decoupled, graph_emb.expand_as(decoupled)], dim=-1))

    def reconstruct(self, patches: torch.Tensor, label_emb: torch.Tensor, graph_emb: torch.Tensor) -> torch.Tensor:
        """Reconstructed patch tokens R (B×P×D) from patch tokens V, label embeddings T and graph embeddings G."""
        num_classes = label_emb.shape[0]
        chunks = range(0, num_classes, self.class_chunk)
        recompute = self.grad_checkpointing
        sda = torch.cat([run_chunk(recompute, self.sda_chunk, patches, label_emb[None, c:c + self.class_chunk])
                         for c in chunks], dim=1)
        fused = self.fuse_classes(sda, label_emb, graph_emb)
        weights = sum(run_chunk(recompute, self.vfr_chunk, patches, fused[:, c:c + self.class_chunk]) for c in chunks)
        return patches * weights

    def score(self, global_feat: torch.Tensor, reconstructed: torch.Tensor, label_emb: torch.Tensor) -> torch.Tensor:
        """Eq. 13: ½ (s_loc/‖s_loc‖ + s_glob/‖s_glob‖), norms across the C classes of each image; fp32 out."""
        local = (reconstructed.to(label_emb.dtype) @ label_emb.t()).float()  # B×P×C
        k = min(self.top_k, local.shape[1])
        local = local.topk(k, dim=1).values.mean(dim=1)
        glob = (global_feat @ label_emb.t()).float()
        return 0.5 * (F.normalize(local, dim=-1) + F.normalize(glob, dim=-1))

    def forward(self, global_feat: torch.Tensor, patches: torch.Tensor, label_emb: torch.Tensor,
                graph_emb: torch.Tensor) -> torch.Tensor:
        """Scores B×C for image features (g: B×D, V: B×P×D) against T (C×D) and G (C×D).

        Disabled, the local branch scores V itself (R = V) and G is ignored: the MKT baseline.
        """
        local_tokens = self.reconstruct(patches, label_emb, graph_emb) if self.enabled else patches
        return self.score(global_feat, local_tokens, label_emb)
