"""Commands that turn a checkpoint into engines and check them: ``export``, ``parity``."""

from __future__ import annotations

import argparse

from sigrl.cli.arguments import positive_int, writable_file, writable_folder, write_json
from sigrl.errors import UsageError
from sigrl.registry import list_models


def cmd_export(args: argparse.Namespace) -> int:
    json_path = writable_file("--json", args.json) if args.json else None
    writable_folder("--out", args.out)
    from sigrl.deploy.onnx_export import export_checkpoint

    report = export_checkpoint(args.checkpoint, args.out, expect_config=args.config)
    for name, info in report.items():
        print(f"{info['path']}: {info['bytes'] / 2**20:.1f} MiB, exported in {info['seconds']:.1f} s")
    if json_path is not None:
        write_json(json_path, {"checkpoint": str(args.checkpoint), "engines": report})
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from sigrl.checkpoint import load_checkpoint
    from sigrl.deploy.parity import compare_runtimes, format_rows, parity_inputs
    from sigrl.deploy.runtimes import OnnxRuntime, TorchRuntime, ort_providers

    json_path = writable_file("--json", args.json) if args.json else None
    try:
        ort_providers(args.device)
    except RuntimeError as err:  # --device cuda without onnxruntime-gpu or without a GPU
        raise UsageError(f"--device {args.device}: {err}") from err
    model = load_checkpoint(args.checkpoint)
    reference, candidate = TorchRuntime(model), OnnxRuntime(args.engines, device=args.device)
    vocabularies, images = parity_inputs(model.vocabulary or [], model.prompt_template,
                                         model.config.vision_cfg["image_size"], args.classes, args.batch)
    rows = compare_runtimes(reference, candidate, vocabularies, images, precision="fp32")
    print(f"PyTorch eager ({reference.provider}) vs ONNX Runtime ({candidate.provider}), fp32 tolerances")
    print(format_rows(rows))
    if json_path is not None:
        write_json(json_path, [r.to_dict() for r in rows])
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)}/{len(rows)} comparisons within tolerance")
    return 1 if failed else 0



def register(commands: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``parity`` to the ``sigrl`` parser."""
    export = commands.add_parser("export", help="export a checkpoint as two ONNX engines (text+GMC, image+SVFR)")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--out", required=True, help="folder for text_gmc.onnx and image_svfr.onnx")
    export.add_argument("--config", choices=list_models(), help="fail unless the checkpoint holds this config")
    export.add_argument("--json", help="write what was exported (paths, sizes, seconds) as JSON here")
    export.set_defaults(func=cmd_export)
    parity = commands.add_parser("parity", help="compare exported ONNX engines with the PyTorch checkpoint")
    parity.add_argument("--checkpoint", required=True)
    parity.add_argument("--engines", required=True, help="folder written by `sigrl export`")
    parity.add_argument("--classes", type=positive_int, nargs="+", default=[1, 12, 300], help="vocabulary sizes")
    parity.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8], help="image batch sizes")
    parity.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="ONNX Runtime device")
    parity.add_argument("--json", help="write the rows as JSON here")
    parity.set_defaults(func=cmd_parity)
