"""Peak RSS and wall time of one `vit-b16` forward on CPU at a large vocabulary.

Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own. Prints a table;
asserts nothing. Example: ``python benchmarks/forward_memory.py --classes 1006 --batch 1 8``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(config: str, classes: int, batch: int, class_chunk: int) -> dict:
    """One forward (text engine + image engine) under no_grad; returns seconds and peak RSS."""
    import torch

    import sigrl
    from sigrl.bench import workload

    torch.manual_seed(0)
    model = sigrl.create_model(config, class_chunk=class_chunk)
    size = model.config.vision_cfg["image_size"]
    ids = torch.from_numpy(workload.token_ids(classes, sigrl.DEFAULT_TEMPLATE))
    images = torch.from_numpy(workload.pixel_batch(batch, size))
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with torch.no_grad():
        start = time.perf_counter()
        label_emb, graph_emb = model.encode_labels(ids)
        text_s = time.perf_counter() - start
        scores = model.score_images(images, label_emb, graph_emb)
        total_s = time.perf_counter() - start
    assert scores.shape == (batch, classes)
    return {"config": config, "classes": classes, "batch": batch, "class_chunk": class_chunk,
            "text_s": round(text_s, 2), "image_s": round(total_s - text_s, 2), "total_s": round(total_s, 2),
            "rss_after_build_gb": round(rss_model, 3),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="vit-b16")
    parser.add_argument("--classes", type=int, default=1006)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--class-chunk", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.classes, args.batch[0], args.class_chunk)))
        return
    print(f"{'config':<9}{'C':>6}{'B':>4}{'chunk':>7}{'text s':>9}{'image s':>9}{'peak RSS GB':>13}")
    for batch in args.batch:
        out = subprocess.run([sys.executable, __file__, "--child", "--config", args.config, "--classes",
                              str(args.classes), "--batch", str(batch), "--class-chunk", str(args.class_chunk)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{r['config']:<9}{r['classes']:>6}{r['batch']:>4}{r['class_chunk']:>7}{r['text_s']:>9}"
              f"{r['image_s']:>9}{r['peak_rss_gb']:>13}   (after build: {r['rss_after_build_gb']} GB)")


if __name__ == "__main__":
    main()
