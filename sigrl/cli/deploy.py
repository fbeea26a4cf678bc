"""Commands that turn a checkpoint into engines and check them: ``export``, ``parity``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sigrl.cli.arguments import positive_int, torch_device, writable_file, writable_folder, write_json
from sigrl.errors import UsageError
from sigrl.registry import MAX_CLASSES, PRECISIONS, RUNTIMES, list_models


def cmd_export(args: argparse.Namespace) -> int:
    json_path = writable_file("--json", args.json) if args.json else None
    writable_folder("--out", args.out)
    from sigrl.deploy.onnx_export import export_checkpoint

    report = export_checkpoint(args.checkpoint, args.out, expect_config=args.config, precision=args.precision,
                               class_chunk=args.class_chunk, max_classes=args.max_classes,
                               calibration_images=args.calibration_images)
    for info in report.values():
        print(f"{info['path']}: {info['precision']}, {info['loops']} loops, {info['bytes'] / 2**20:.1f} MiB, "
              f"exported in {info['seconds']:.1f} s")
    if json_path is not None:
        write_json(json_path, {"checkpoint": str(args.checkpoint), "engines": report})
    return 0


def add_runtime_arguments(parser: argparse.ArgumentParser, engines_help: str) -> None:
    """``--engines``, ``--runtime``, ``--precision`` and ``--device``: which runtime scores (parity, eval)."""
    parser.add_argument("--engines", help=engines_help)
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="default: onnxruntime with --engines, else torch. onnx-reference runs graphs "
                             "ONNX Runtime's CPU provider cannot (bf16), slowly; tensorrt takes a folder of plans")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="torch: cast the model (fp32, fp16, bf16); engines: must match what they were exported at")
    parser.add_argument("--device", help="where the runtime runs: cpu, cuda or cuda:N (default: cuda where available)")


def check_runtime_arguments(args: argparse.Namespace) -> str:
    """The runtime kind the ``add_runtime_arguments`` flags ask for, with the flags checked before anything
    slow is loaded (UsageError naming the flag)."""
    from sigrl.deploy.runtimes import ort_providers

    kind = args.runtime or ("onnxruntime" if args.engines else "torch")
    if kind == "torch" and args.engines:
        raise UsageError("--runtime torch runs the checkpoint itself: leave out --engines")
    if kind == "torch":
        torch_device("--device", args.device)
    elif kind == "onnxruntime":
        try:
            ort_providers(args.device or "auto")
        except (RuntimeError, ValueError) as err:  # cuda without onnxruntime-gpu, or a device it does not know
            raise UsageError(f"--device {args.device}: {err}") from err
    if args.engines and kind != "tensorrt":
        _check_exported_from(Path(args.engines), Path(args.checkpoint))
    return kind


def runtime_from_arguments(args: argparse.Namespace, kind: str, model):
    """The ``kind`` of runtime (from :func:`check_runtime_arguments`, called before loading ``model``)."""
    from sigrl.deploy.runtimes import create_runtime

    return create_runtime(kind, model=model, engines=args.engines, precision=args.precision,
                          device=args.device or "auto")


def _check_exported_from(engines: Path, checkpoint: Path) -> None:
    """Refuse engines exported from another checkpoint than the one they are compared or evaluated with."""
    from sigrl.deploy.engines import TextGMCEngine
    from sigrl.deploy.metadata import file_sha256, read_metadata

    if not (engines / TextGMCEngine.file_name).is_file():
        return  # the runtime names what is missing
    exported_from = read_metadata(engines / TextGMCEngine.file_name).checkpoint_sha256
    if exported_from and exported_from != file_sha256(checkpoint):
        raise UsageError(f"--engines {engines} were exported from another checkpoint than {checkpoint}")


def cmd_parity(args: argparse.Namespace) -> int:
    from sigrl.checkpoint import load_checkpoint
    from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine
    from sigrl.deploy.parity import compare_runtimes, format_rows, parity_inputs
    from sigrl.deploy.runtimes import TorchRuntime

    json_path = writable_file("--json", args.json) if args.json else None
    kind = check_runtime_arguments(args)
    model = load_checkpoint(args.checkpoint)
    if kind == "torch" and args.precision in (None, "fp32"):
        raise UsageError("nothing to compare: pass --engines (exported engines) or --precision fp16/bf16 "
                         "(PyTorch at that precision)")
    candidate = runtime_from_arguments(args, kind, model)
    reference = TorchRuntime(model, candidate.provider if candidate.name == "torch" else "cpu")
    vocabularies, images = parity_inputs(model.vocabulary or [], model.prompt_template,
                                         model.config.vision_cfg["image_size"], args.classes, args.batch)
    rows = compare_runtimes(reference, candidate, vocabularies, images)
    text, image = candidate.engine_precisions[TextGMCEngine.name], candidate.engine_precisions[ImageSVFREngine.name]
    print(f"PyTorch eager fp32 ({reference.provider}) vs {candidate.name} {candidate.precision} "
          f"({candidate.provider}); tolerances of each engine's precision (text {text}, image {image})")
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
    export.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp16/bf16: weights and products in that precision, sensitive steps fp32; "
                             "int8: image engine quantized for ONNX Runtime on CPUs (dynamic int8), text engine fp32; "
                             "int8-qdq/fp8: image engine quantized for TensorRT (Q/DQ, calibrated on "
                             "--calibration-images; fp8 needs Ada/Hopper), text engine fp16")
    export.add_argument("--calibration-images", metavar="DIR",
                        help="int8-qdq/fp8: a folder of your images (e.g. 100-500 of the kind you serve) to set the "
                             "activation scales from")
    export.add_argument("--class-chunk", type=positive_int,
                        help="SVFR classes per loop iteration in the graph (default: the config's; more = fewer "
                             "iterations, more memory); a chunk that covers --max-classes leaves the loop out")
    export.add_argument("--max-classes", type=positive_int, default=MAX_CLASSES,
                        help=f"the largest vocabulary the engines take (default {MAX_CLASSES}); with --class-chunk "
                             "as large, the image engine has no loop (TensorRT fuses the SVFR math)")
    export.add_argument("--json", help="write what was exported (paths, sizes, seconds) as JSON here")
    export.set_defaults(func=cmd_export)
    parity = commands.add_parser("parity", help="compare exported engines (or PyTorch at low precision) with the "
                                                "fp32 PyTorch checkpoint, at the tolerances of their precision")
    parity.add_argument("--checkpoint", required=True)
    add_runtime_arguments(parity, "folder written by `sigrl export` (or `sigrl build-engines` for tensorrt)")
    parity.add_argument("--classes", type=positive_int, nargs="+", default=[1, 12, 300], help="vocabulary sizes")
    parity.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8], help="image batch sizes")
    parity.add_argument("--json", help="write the rows as JSON here")
    parity.set_defaults(func=cmd_parity)
