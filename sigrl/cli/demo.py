"""``sigrl demo``: the whole chain on the built-in default, from training to tagging over gRPC."""

from __future__ import annotations

import argparse
from pathlib import Path

from sigrl.cli.arguments import positive_int


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole chain on the built-in default: train ``tiny`` on synthetic shapes, evaluate, export,
    serve with Triton, tag images over gRPC, and compare served with in-process scores and latency."""
    import numpy as np

    from sigrl.checkpoint import load_checkpoint
    from sigrl.data.synthetic import SyntheticShapes
    from sigrl.deploy.onnx_export import export_checkpoint
    from sigrl.deploy.runtimes import TorchRuntime
    from sigrl.evaluation import evaluate_dataset, format_report
    from sigrl.serving.client import SigRLClient
    from sigrl.serving.measure import InProcessTagger, latency, png_bytes
    from sigrl.serving.repository import build_repository
    from sigrl.serving.server import TritonServer
    from sigrl.serving.triton_runtime import TritonRuntime
    from sigrl.training import recipe_for, train

    out = Path(args.out)
    config = recipe_for("tiny", out=str(out), max_steps=args.max_steps)
    print(f"[1/5] training 'tiny' on synthetic shapes for {config.epochs} epochs (CPU, a minute or two) ...")
    train(config)
    checkpoint = out / "best.pt"
    model = load_checkpoint(checkpoint)
    print(format_report(evaluate_dataset(model, "synthetic", split="test")))

    print("[2/5] exporting ONNX engines ...")
    export_checkpoint(checkpoint, out / "engines")
    print("[3/5] building the Triton model repository (python runtime: ONNX Runtime inside Triton) ...")
    repo = build_repository(out / "engines", "python", out / "triton_repo", overwrite=True)

    vocabulary = list(model.vocabulary or [])  # a trained checkpoint records its labels
    test = SyntheticShapes("test", num_images=4, image_size=model.config.vision_cfg["image_size"])
    images = [png_bytes(image) for image in test.images]
    names = [f"test-{i}.png" for i in range(len(images))]
    print("[4/5] starting Triton and tagging 4 synthetic test images over gRPC ...")
    with TritonServer(repo) as server:
        client = SigRLClient(server.grpc_url)
        for tagging, labels in zip(client.tag(names, images, top_k=4), test.labels):
            truth = [vocabulary[c] for c in range(len(labels)) if labels[c] > 0]
            print(f"  {tagging.image}: " + ", ".join(f"{n} ({s:.2f})" for n, s in tagging.top)
                  + f"   | truth: {', '.join(truth)}")

        print("[5/5] served vs in-process ONNX Runtime (same engines, same images):")
        local = InProcessTagger(out / "engines")
        served_scores, _ = client.infer(images, vocabulary)
        local_scores = local.scores(images, vocabulary)
        print(f"  entry model scores, max abs difference: {np.abs(served_scores - local_scores).max():.2e}")
        pixels, token_ids = local.pixels(images), model.tokenize(vocabulary)
        torch_scores = TorchRuntime(model).predict(pixels, token_ids)
        print(f"  vs PyTorch eager, max abs difference:   {np.abs(served_scores - torch_scores).max():.2e}")
        served_engines = TritonRuntime(server.grpc_url).predict(pixels, token_ids)
        print(f"  engine models over gRPC vs in process:  "
              f"{np.abs(served_engines - local.runtime.predict(pixels, token_ids)).max():.2e}")
        one = images[:1]
        served = latency(lambda: client.infer(one, vocabulary), repeats=50)
        in_process = latency(lambda: local.scores(one, vocabulary), repeats=50)
        print(f"  latency of one image, {len(vocabulary)} labels (cached vocabulary), 50 requests: "
              f"served p50 {served['p50_ms']:.1f} ms / p95 {served['p95_ms']:.1f} ms; "
              f"in process p50 {in_process['p50_ms']:.1f} ms / p95 {in_process['p95_ms']:.1f} ms")
        client.close()
    print("Triton stopped. Files in", out)
    return 0



def register(commands: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``sigrl`` parser."""
    demo = commands.add_parser("demo", help="train tiny, evaluate, export, serve with Triton, tag over gRPC")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--max-steps", type=positive_int)
    demo.set_defaults(func=cmd_demo)
