"""One prepared GPU run for ``vit-b16`` (random weights, no downloads, under 8 minutes on an H100-class GPU).

Measures, on the first CUDA device (``--device cpu`` runs every step that exists on a CPU, for CI):

* the image engine (image encoder + SVFR) in img/s at C = 81 and 1006, B = 1 … 64, as eager fp32,
  eager bf16 (autocast), ``torch.compile`` (bf16, default mode, B = 64 only: each shape compiles) and
  a CUDA graph replay of the bf16 forward (CUDA only: on a CPU it is noted as not run, with the reason);
* the text engine (text encoder + GMC) for 1006 labels, fp32 and bf16;
* one training step (B = 32, C = 925, bf16 autocast on CUDA, activation checkpointing) with peak memory
  and img/s, by ``train_step_memory.measure``;
* the GEMM roofline (fp32, bf16, int8) of the same device.

Writes ``results.json`` (the ``sigrl bench`` schema, device in ``machine.gpu``; ``source`` is
``gpu_bench``) and ``report.md`` + plots beside it. Asserts nothing. Examples:
``python benchmarks/gpu_bench.py --out runs/gpu-h100``;
``python benchmarks/gpu_bench.py --device cpu --config tiny --classes 12 --batch 1 2 --out runs/gpu-cpu``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from train_step_memory import measure as train_step

import sigrl
from sigrl.bench.flops import count_gflop, gemm_roofline
from sigrl.bench.report import render_report, write_plots
from sigrl.bench.results import Row, machine_record, new_results, save_results
from sigrl.bench.workload import vocabulary

SOURCE = "gpu_bench"


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def timed(call: Callable[[], object], repeats: int, device: torch.device, warmup: int = 3) -> list[float]:
    """Seconds per ``call`` after ``warmup`` calls: CUDA events on a GPU, the wall clock on a CPU."""
    for _ in range(warmup):
        call()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return times
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def cuda_graph(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` captured once as a CUDA graph (static inputs); returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph.replay


def row(precision: str, engine: str, batch: int, classes: int, times: list[float], items: int, unit: str,
        gflop: float | None, device: torch.device, case: str = "", peak_gb: float | None = None) -> Row:
    ordered = sorted(times)
    p50 = statistics.median(ordered)
    return Row("torch", precision, engine, batch, classes, p50 * 1e3,
               ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3, items / p50, unit, SOURCE,
               case=case, gflop=gflop, provider=device_name(device), peak_gb=peak_gb)


def image_rows(model: torch.nn.Module, classes: int, batches: list[int], repeats: int, notes: list[str],
               device: torch.device, compile_backend: str = "inductor") -> list[Row]:
    """Eager fp32/bf16 and CUDA-graph bf16 at every batch, ``torch.compile`` bf16 at the largest.

    A variant that cannot run here (CUDA graphs on a CPU) or fails (a capture or compile error) becomes a
    note instead of ending the one-shot run.
    """
    size = model.config.vision_cfg["image_size"]
    ids = sigrl.tokenize(vocabulary(classes)).to(device)
    with torch.no_grad():
        label_emb, graph_emb = model.encode_labels(ids)
        per_image = count_gflop(lambda: model.score_images(torch.randn(1, 3, size, size, device=device),
                                                           label_emb, graph_emb))
    # no autocast weight cache: a CUDA graph must not capture casts cached outside it
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    compiled = torch.compile(model.score_images, backend=compile_backend)  # default mode: max-autotune won't fit
    rows = []
    for batch in batches:
        images = torch.randn(batch, 3, size, size, device=device)

        def eager(images: torch.Tensor = images) -> object:
            return model.score_images(images, label_emb, graph_emb)

        def eager_bf16(images: torch.Tensor = images) -> object:
            with bf16:
                return model.score_images(images, label_emb, graph_emb)

        def compiled_bf16(images: torch.Tensor = images) -> object:
            with bf16:
                return compiled(images, label_emb, graph_emb)

        variants = [("fp32", "", lambda: timed(eager, repeats, device)),
                    ("bf16", "", lambda: timed(eager_bf16, repeats, device))]
        if device.type == "cuda":
            variants.append(("bf16", "cuda-graph", lambda: timed(cuda_graph(eager_bf16), repeats, device)))
        else:
            notes.append(f"cuda-graph bf16 B={batch} C={classes}: not run (CUDA graphs need a CUDA device)")
        if batch == max(batches):
            variants.append(("bf16", "torch.compile", lambda: timed(compiled_bf16, repeats, device, warmup=5)))
        for precision, case, run in variants:
            try:
                with torch.no_grad():
                    times = run()
            except RuntimeError as err:
                notes.append(f"{case or 'eager'} {precision} B={batch} C={classes} failed: {str(err).splitlines()[0]}")
                continue
            rows.append(row(precision, "image_svfr", batch, classes, times, batch, "img/s", per_image * batch, device,
                            case))
            print(rows[-1].label() + f": {rows[-1].throughput:,.1f} img/s", flush=True)
    return rows


def text_rows(model: torch.nn.Module, classes: int, repeats: int, device: torch.device) -> list[Row]:
    ids = sigrl.tokenize(vocabulary(classes)).to(device)
    rows = []
    with torch.no_grad():
        work = count_gflop(lambda: model.encode_labels(ids))
        for precision, enabled in (("fp32", False), ("bf16", True)):
            def encode(enabled: bool = enabled) -> object:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
                    return model.encode_labels(ids)

            rows.append(row(precision, "text_gmc", 1, classes, timed(encode, repeats, device), 1, "vocab/s", work,
                            device))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for results.json, report.md and plots")
    parser.add_argument("--device", default="cuda", help="cuda (the run this is for) or cpu (every step a CPU has)")
    parser.add_argument("--config", default="vit-b16")
    parser.add_argument("--classes", type=int, nargs="+", default=[81, 1006])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--text-classes", type=int, default=1006)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-classes", type=int, default=925)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (inductor; a CPU check may pass aot_eager to trace without "
                             "codegen)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py --device cuda needs a CUDA device; none is visible (--device cpu runs on a CPU)")
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (TF32 would be a third precision)
    roofline = gemm_roofline(max_size=8192 if device.type == "cuda" else 1024, seconds=2.0, device=args.device)
    print(f"roofline GFLOP/s: {roofline}", flush=True)
    torch.manual_seed(0)
    model = sigrl.create_model(args.config).to(device).eval()
    rows, notes = [], []
    for classes in args.classes:
        rows += image_rows(model, classes, args.batch, args.repeats, notes, device, args.compile_backend)
    rows += text_rows(model, args.text_classes, args.repeats, device)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    step = train_step(args.config, args.device, args.train_batch, args.train_classes, True, 32, steps=3)
    rows.append(row("bf16" if device.type == "cuda" else "fp32", "train_step", args.train_batch, args.train_classes,
                    [step["step_s"]], args.train_batch, "img/s", None, device, case="checkpointing",
                    peak_gb=step["peak_gb"]))
    notes.append(f"gpu_bench.py on {device_name(device)}, {time.perf_counter() - started:.0f} s in all; "
                 f"train_step is one timed mean of 3 steps (p50 = p95; peak memory: {step['peak_kind']})")
    results = new_results(args.config, machine_record(), roofline, rows, notes)
    save_results(results, out / "results.json")
    results["rows"] = rows
    (out / "report.md").write_text(render_report(results))
    write_plots(results, out)
    print(*notes, sep="\n")
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")


if __name__ == "__main__":
    main()
