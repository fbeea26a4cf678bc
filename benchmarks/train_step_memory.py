"""Peak memory and throughput of one full-size training step (spec §3 recipe, issue: memory at full size).

Builds the model with random weights (memory and speed do not depend on the values), the frozen teacher,
AdamW with layer-wise lr decay, and runs ranking + L1 distillation steps on random images and labels.
On CUDA it reports ``torch.cuda.max_memory_allocated`` and images/s under bf16 autocast; on CPU each
configuration runs in a fresh subprocess and reports its peak RSS. Prints a table; asserts nothing.

    python benchmarks/train_step_memory.py --device cuda --batch 32 --classes 925
    python benchmarks/train_step_memory.py --device cpu --batch 2 --classes 925 --steps 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(config: str, device: str, batch: int, classes: int, checkpointing: bool, class_chunk: int,
            steps: int) -> dict:
    import torch

    import sigrl
    from sigrl.bench import workload
    from sigrl.losses import distillation_loss, ranking_loss
    from sigrl.params import param_groups

    torch.manual_seed(0)
    model = sigrl.create_model(config, class_chunk=class_chunk).to(device).train()
    model.set_grad_checkpointing(checkpointing)
    teacher = model.make_teacher().to(device)
    optimizer = torch.optim.AdamW(param_groups(model, 1e-4, 0.05, 0.65), lr=1e-4)
    size = model.config.vision_cfg["image_size"]
    with torch.no_grad():
        label_emb = model.encode_text(torch.from_numpy(workload.token_ids(classes, sigrl.DEFAULT_TEMPLATE)).to(device))
    images = torch.from_numpy(workload.pixel_batch(batch, size)).to(device)
    labels = torch.where(torch.rand(batch, classes, device=device) < 0.05, 1.0, -1.0)
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def step() -> float:
        with autocast:
            scores, global_feat = model(images, label_emb=label_emb, return_global=True)
            with torch.no_grad():
                target = teacher(images)
            loss = ranking_loss(scores.float(), labels) + distillation_loss(global_feat.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    step()  # warm-up (allocator, kernels, optimizer state)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    return {"config": config, "device": device, "batch": batch, "classes": classes, "checkpointing": checkpointing,
            "class_chunk": class_chunk, "step_s": round(seconds, 3), "images_per_s": round(batch / seconds, 2),
            "peak_gb": round(peak, 2), "peak_kind": "cuda max allocated" if cuda else "process peak RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="vit-b16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=925)
    parser.add_argument("--class-chunk", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.config, args.device, args.batch, args.classes, args.checkpointing[0] == "on",
                         args.class_chunk, args.steps)
        print(json.dumps(result))
        return
    print(f"{'config':<9}{'device':<8}{'B':>4}{'C':>6}{'ckpt':>6}{'chunk':>7}{'s/step':>9}{'img/s':>8}{'peak GB':>9}")
    for mode in args.checkpointing:
        command = [sys.executable, __file__, "--child", "--config", args.config, "--device", args.device,
                   "--batch", str(args.batch), "--classes", str(args.classes), "--class-chunk",
                   str(args.class_chunk), "--steps", str(args.steps), "--checkpointing", mode]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"checkpointing {mode}: failed: {run.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{r['config']:<9}{r['device']:<8}{r['batch']:>4}{r['classes']:>6}{mode:>6}{r['class_chunk']:>7}"
              f"{r['step_s']:>9}{r['images_per_s']:>8}{r['peak_gb']:>9}  ({r['peak_kind']})")


if __name__ == "__main__":
    main()
