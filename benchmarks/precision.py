"""The precision table: speed against eager fp32, score error, and ΔmAP, for every runtime × precision.

Exports one engine folder per precision (or reuses ``--engines-root/<precision>``), then, in this one
process and interleaved round by round (the machine is noisy, so ratios are taken side by side), times
the image engine of each runtime at each C and B, and compares its scores with eager fp32 on the same
inputs. With ``--checkpoint`` (a trained model, e.g. the demo's ``tiny``) it also evaluates every
runtime on the checkpoint's dataset (synthetic test split by default) and reports ΔmAP against eager
fp32. Prints tables, writes ``--json``; asserts nothing.

    python benchmarks/precision.py --config vit-b16 --classes 81 --batch 1      # random weights: speed, error
    python benchmarks/precision.py --checkpoint runs/demo/best.pt --classes 12  # trained tiny: + ΔmAP
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import sigrl
from sigrl.checkpoint import load_checkpoint, model_payload, save_atomic
from sigrl.deploy.accuracy import evaluate_runtime
from sigrl.deploy.onnx_export import export_checkpoint
from sigrl.deploy.parity import parity_inputs, rel_l2, topk_agreement
from sigrl.deploy.quantization import write_synthetic_images
from sigrl.deploy.runtimes import EngineRuntime, create_runtime
from sigrl.deploy.tolerances import TOLERANCES
from sigrl.evaluation import evaluate_dataset
from sigrl.registry import CALIBRATED_PRECISIONS

# (runtime, precision) pairs measured; onnx-reference is numpy and only sensible for small models. ONNX Runtime
# runs the Q/DQ graphs (int8-qdq, fp8) as simulated quantization: their error and ΔmAP are TensorRT's to expect,
# their speed here says nothing of TensorRT's.
CASES = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
         ("onnxruntime", "int8"), ("onnxruntime", "int8-qdq"), ("onnxruntime", "fp8"), ("onnx-reference", "bf16"))


def build_runtimes(model, checkpoint: Path, engines_root: Path, cases: list[tuple[str, str]],
                   calibration: Path) -> dict:
    runtimes: dict[tuple[str, str], EngineRuntime] = {}
    for kind, precision in cases:
        if kind == "torch":
            runtimes[kind, precision] = create_runtime("torch", model=model, precision=precision, device="cpu")
            continue
        folder = engines_root / precision
        if not (folder / "image_svfr.onnx").is_file():
            start = time.perf_counter()
            export_checkpoint(checkpoint, folder, precision=precision,
                              calibration_images=calibration if precision in CALIBRATED_PRECISIONS else None)
            print(f"exported {precision} engines in {time.perf_counter() - start:.1f} s")
        runtimes[kind, precision] = create_runtime(kind, engines=folder, device="cpu")
    return runtimes


def time_image_engine(runtimes: dict, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray,
                      rounds: int, slow: set) -> dict:
    """Median seconds per image-engine call of each runtime, interleaved round by round."""
    samples: dict = {key: [] for key in runtimes}
    for runtime in runtimes.values():  # warm-up
        runtime.score_images(images, label_emb, graph_emb)
    for r in range(rounds):
        for key, runtime in runtimes.items():
            if key in slow and r > 0:
                continue
            start = time.perf_counter()
            runtime.score_images(images, label_emb, graph_emb)
            samples[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="random weights of this config (without --checkpoint)")
    parser.add_argument("--checkpoint", help="a trained checkpoint: adds ΔmAP on its dataset")
    parser.add_argument("--engines-root", help="reuse/keep exports here, one folder per precision")
    parser.add_argument("--classes", type=int, nargs="+", default=[81])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cases", nargs="+", default=[f"{k}:{p}" for k, p in CASES],
                        help="runtime:precision pairs")
    parser.add_argument("--calibration-images", help="int8-qdq/fp8 calibration folder (default: 128 synthetic "
                                                     "training images, never the test set)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [tuple(case.split(":")) for case in args.cases]
    work = Path(tempfile.mkdtemp(prefix="sigrl-precision-"))
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        torch.manual_seed(0)
        checkpoint = work / "model.pt"
        save_atomic(model_payload(sigrl.create_model(args.config), []), checkpoint)
    model = load_checkpoint(checkpoint)
    calibration = Path(args.calibration_images or write_synthetic_images(work / "calibration",
                                                                         model.config.vision_cfg["image_size"], 128))
    runtimes = build_runtimes(model, checkpoint, Path(args.engines_root or work / "engines"), cases, calibration)
    reference = runtimes.get(("torch", "fp32")) or create_runtime("torch", model=model, device="cpu")
    slow = {key for key in runtimes if key[0] == "onnx-reference"}
    vocabularies, batches = parity_inputs(model.vocabulary or [], model.prompt_template,
                                          model.config.vision_cfg["image_size"], args.classes, args.batch)
    rows = []
    for token_ids in vocabularies:
        label_emb, graph_emb = reference.encode_labels(token_ids)
        for images in batches:
            seconds = time_image_engine(runtimes, images, label_emb, graph_emb, args.rounds, slow)
            ref_scores = reference.score_images(images, label_emb, graph_emb)
            for (kind, precision), runtime in runtimes.items():
                scores = runtime.score_images(images, label_emb, graph_emb)
                tie = 2 * TOLERANCES[precision].score_max_abs
                rows.append({"runtime": kind, "precision": precision, "classes": len(token_ids), "batch": len(images),
                             "seconds": seconds[kind, precision],
                             "speedup_vs_eager_fp32": seconds["torch", "fp32"] / seconds[kind, precision]
                             if ("torch", "fp32") in seconds else None,
                             "score_max_abs": float(np.abs(scores - ref_scores).max()),
                             "score_rel_l2": rel_l2(ref_scores, scores),
                             "top5_agreement": topk_agreement(ref_scores, scores, 5, tie)})
    if args.checkpoint:
        data = "synthetic"
        base = evaluate_dataset(model, data, split="test")
        base_map = next(iter(base.values()))["mAP"]
        for (kind, precision), runtime in runtimes.items():
            report = evaluate_runtime(runtime, model.prompt_template, model.config.vision_cfg["image_size"], data,
                                      split="test")
            value = next(iter(report.values()))["mAP"]
            for row in rows:
                if (row["runtime"], row["precision"]) == (kind, precision):
                    row.update(mAP=value, delta_mAP=value - base_map)
        print(f"eager fp32 test mAP on {data}: {base_map:.2f}")
    print(f"{'runtime':<16}{'prec':<6}{'C':>6}{'B':>4}{'ms':>10}{'× eager':>9}{'max abs':>10}{'rel L2':>10}"
          f"{'top-5':>7}{'mAP':>8}{'ΔmAP':>8}")
    for row in rows:
        speed = f"{row['speedup_vs_eager_fp32']:.2f}" if row["speedup_vs_eager_fp32"] else "-"
        accuracy = f"{row['mAP']:>8.2f}{row['delta_mAP']:>+8.2f}" if "mAP" in row else ""
        print(f"{row['runtime']:<16}{row['precision']:<6}{row['classes']:>6}{row['batch']:>4}"
              f"{row['seconds'] * 1e3:>10.1f}{speed:>9}{row['score_max_abs']:>10.2e}{row['score_rel_l2']:>10.2e}"
              f"{row['top5_agreement']:>7.2f}{accuracy}")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "config": model.config_name,
                                               "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
