"""``build-engines``: compile the exported ONNX engines into TensorRT plans on the serving GPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sigrl.registry import HARDWARE_COMPAT


def cmd_build_engines(args: argparse.Namespace) -> int:
    from sigrl.deploy.tensorrt import BUILD_RECORD, BuildOptions, TensorRTUnavailable, build_plans, plan_commands

    engines, out = Path(args.engines), Path(args.out)
    options = BuildOptions(workspace_gb=args.workspace_gb, hardware_compat=args.hardware_compat,
                           timing_cache=Path(args.timing_cache) if args.timing_cache else None,
                           builder_optimization_level=args.builder_optimization_level,
                           version_compatible=args.version_compatible)
    try:
        record = build_plans(engines, out, options)
    except TensorRTUnavailable as err:  # one line: what is missing, and how to build without sigrl
        commands = " && ".join(plan_commands(engines, out, options=options).values())
        print(f"sigrl build-engines: error: {err}; on a TensorRT 10.x GPU server run: {commands} "
              "(TensorRT 11.x: the same without --stronglyTyped)", file=sys.stderr)
        return 1
    for build in record.engines.values():
        assert build.plan_bytes is not None and build.build_seconds is not None  # filled in by the build
        print(f"{out / build.plan}: {build.precision}, class chunk {build.class_chunk}, {build.loops} loops, "
              f"{build.plan_bytes / 2**20:.1f} MiB, built in {build.build_seconds:.1f} s")
        print(f"  equivalent: {build.trtexec}")
    print(f"{out / BUILD_RECORD}: TensorRT {record.tensorrt_version}"
          f"{' (version-compatible)' if record.version_compatible else ''}, {record.gpu_name} "
          f"(compute capability {record.compute_capability}), hardware compatibility {record.hardware_compat}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``build-engines`` to the ``sigrl`` parser."""
    build = commands.add_parser("build-engines", help="compile exported engines into TensorRT plans (TensorRT + GPU)")
    build.add_argument("--engines", required=True, help="folder written by `sigrl export`")
    build.add_argument("--out", required=True, help="folder for text_gmc.plan, image_svfr.plan, build_record.json")
    build.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace memory pool (GiB)")
    build.add_argument("--timing-cache", help="timing cache file: read when present, written after the build")
    build.add_argument("--hardware-compat", default="none", choices=HARDWARE_COMPAT,
                       help="ampere+: one plan for every Ampere or newer GPU (may run slower)")
    build.add_argument("--builder-optimization-level", type=int,
                       help="0-5 (TensorRT's default 3): higher builds longer and may run faster")
    build.add_argument("--version-compatible", action="store_true",
                       help="plans that also load in later TensorRT releases (lean runtime inside; may run slower; "
                            "Triton needs --backend-config=tensorrt,version-compatible=true)")
    build.set_defaults(func=cmd_build_engines)
