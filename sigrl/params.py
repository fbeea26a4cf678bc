"""Parameter bookkeeping: layer-wise lr-decay groups for the optimiser and the parameter count table."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from sigrl.model import SigRL


def _vision_layer_id(name: str, num_blocks: int) -> int:
    """0 for the ViT stem, i + 1 for block i, num_blocks + 1 for everything after the blocks."""
    if name.startswith("clip.visual.transformer.resblocks."):
        return int(name.split(".")[4]) + 1
    stem = ("clip.visual.conv1", "clip.visual.class_embedding", "clip.visual.positional_embedding",
            "clip.visual.ln_pre")
    return 0 if name.startswith(stem) else num_blocks + 1


def param_groups(model: SigRL, lr: float, weight_decay: float, layer_decay: float = 0.65) -> list[dict]:
    """AdamW groups over trainable parameters: lr × layer_decay^(depth from the top), no decay on 1-D params.

    The heads (ln_post, proj, GMC, SVFR, CoOp context) get the full lr; ViT block i gets
    lr × layer_decay^(num_blocks - i); the stem lr × layer_decay^(num_blocks + 1).
    """
    num_blocks = len(model.clip.visual.transformer.resblocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = _vision_layer_id(name, num_blocks)
        no_decay = param.ndim <= 1 or name.endswith(("class_embedding", "positional_embedding"))
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_blocks + 1 - layer)
            groups[key] = {"params": [], "lr": lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_decay else weight_decay, "name": f"layer{layer}"}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def _count(params) -> tuple[int, int]:
    params = list(params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params) - trainable


def parameter_table(model: SigRL, include_teacher: bool = True) -> list[tuple[str, int, int]]:
    """Rows (module, trainable, frozen) covering every parameter once, plus the training-only teacher."""
    visual = model.clip.visual
    blocks = visual.transformer.resblocks
    frozen_blocks = model.config.freeze_vision_blocks
    rows: OrderedDict[str, list[nn.Parameter]] = OrderedDict()
    rows["image: conv1 + embeddings + ln_pre"] = [visual.conv1.weight, visual.class_embedding,
                                                 visual.positional_embedding, *visual.ln_pre.parameters()]
    if frozen_blocks > 0:
        rows[f"image: ViT blocks 0-{frozen_blocks - 1}"] = list(blocks[:frozen_blocks].parameters())
    rows[f"image: ViT blocks {frozen_blocks}-{len(blocks) - 1}"] = list(blocks[frozen_blocks:].parameters())
    rows["image: ln_post + proj"] = [*visual.ln_post.parameters(), visual.proj]
    text = [p for n, p in model.clip.named_parameters() if not n.startswith("visual.")]
    rows["text: CLIP text tower (+ logit_scale)"] = text
    if model.prompt_context is not None:
        rows["text: CoOp context"] = list(model.prompt_context.parameters())
    unused = "" if model.config.use_svfr else ", unused (use_svfr false)"  # kept in checkpoints, never in a score
    rows[f"GMC (GATv2 x2){unused}"] = list(model.gmc.parameters())
    rows[f"SDA (FC){unused}"] = list(model.svfr.sda_proj.parameters())
    rows[f"VFR (fuse + FC){unused}"] = [*model.svfr.fuse.parameters(), *model.svfr.vfr_proj.parameters()]
    table = [(name, *_count(params)) for name, params in rows.items()]
    assert sum(t + f for _, t, f in table) == sum(p.numel() for p in model.parameters()), "table misses parameters"
    if include_teacher:
        table.append(("training only: frozen CLIP teacher (visual)", 0, sum(p.numel() for p in visual.parameters())))
    return table


def _millions(trainable: int, frozen: int) -> str:
    """The trainable, frozen and total columns of one row, in millions."""
    return f"{trainable / 1e6:>11.3f}M{frozen / 1e6:>11.3f}M{(trainable + frozen) / 1e6:>11.3f}M"


def format_parameter_table(table: list[tuple[str, int, int]]) -> str:
    """The table as aligned text with totals, in millions."""
    width = max(len(name) for name, _, _ in table) + 2
    lines = [f"{'module':<{width}}{'trainable':>12}{'frozen':>12}{'total':>12}"]
    for name, trainable, frozen in table:
        lines.append(f"{name:<{width}}{_millions(trainable, frozen)}")
    model_rows = [r for r in table if not r[0].startswith("training only")]
    trainable, frozen = sum(r[1] for r in model_rows), sum(r[2] for r in model_rows)
    lines.append(f"{'model total':<{width}}{_millions(trainable, frozen)}")
    return "\n".join(lines)
