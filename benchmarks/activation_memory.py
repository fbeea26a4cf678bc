"""Bytes autograd stores for the backward pass of one training forward, at full size, on any device.

A ``saved_tensors_hooks`` pack hook tallies every tensor autograd saves (once per storage, parameters
excluded) and then drops it, so a forward that would store ~95 GB runs in a few GB of RAM. The count is
the activation memory a GPU must hold between forward and backward (fp32 here; bf16 autocast stores
most of it in half the bytes). It leaves out the transient peak of recomputing one checkpointed chunk.

    python benchmarks/activation_memory.py --batch 32 --classes 925
"""

from __future__ import annotations

import argparse
import time
import weakref

import torch

import sigrl
from sigrl.bench import workload
from sigrl.losses import distillation_loss, ranking_loss


def stored_activation_bytes(model: sigrl.SigRL, teacher: torch.nn.Module, images: torch.Tensor,
                            label_emb: torch.Tensor, labels: torch.Tensor) -> int:
    """Bytes of distinct non-parameter storages saved for backward by one ranking + distillation forward.

    Dropped tensors free their memory and the allocator reuses addresses, so an address counts as already
    seen only while the tensor first saved there is still alive (in a real run autograd keeps it alive).
    """
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    counted: dict[int, weakref.ref] = {}
    total = 0

    def pack(tensor: torch.Tensor) -> None:
        nonlocal total
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        first = counted.get(address)
        if address in parameters or (first is not None and first() is not None):
            return
        counted[address] = weakref.ref(tensor if tensor._base is None else tensor._base)
        total += storage.nbytes()
        # the tensor is dropped: this forward is for counting only, no backward follows

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("activation counting run: backward is not possible")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        scores, global_feat = model(images, label_emb=label_emb, return_global=True)
        with torch.no_grad():
            target = teacher(images)
        ranking_loss(scores, labels) + distillation_loss(global_feat, target)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="vit-b16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=925)
    parser.add_argument("--class-chunk", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = sigrl.create_model(args.config, class_chunk=args.class_chunk).train()
    teacher = model.make_teacher()
    size = model.config.vision_cfg["image_size"]
    with torch.no_grad():
        label_emb = model.encode_text(torch.from_numpy(workload.token_ids(args.classes, sigrl.DEFAULT_TEMPLATE)))
    images = torch.from_numpy(workload.pixel_batch(args.batch, size))
    labels = torch.where(torch.rand(args.batch, args.classes) < 0.05, 1.0, -1.0)
    print(f"{args.config}, B={args.batch}, C={args.classes}, class chunk {args.class_chunk}, fp32")
    for checkpointing in (True, False):
        model.set_grad_checkpointing(checkpointing)
        start = time.perf_counter()
        stored = stored_activation_bytes(model, teacher, images, label_emb, labels)
        print(f"  activation checkpointing {'on ' if checkpointing else 'off'}: {stored / 2**30:8.2f} GiB stored "
              f"for backward  ({time.perf_counter() - start:.0f} s forward)", flush=True)


if __name__ == "__main__":
    main()
