"""One prepared GPU run for ``vit-b16`` (random weights, no downloads, under 8 minutes on an H100-class GPU).

Measures, on the first CUDA device:

* the image engine (image encoder + SVFR) in img/s at C = 81 and 1006, B = 1 … 64, as eager fp32,
  eager bf16 (autocast), ``torch.compile`` (bf16, default mode, B = 64 only: each shape compiles) and
  a CUDA graph replay of the bf16 forward;
* the text engine (text encoder + GMC) for 1006 labels, fp32 and bf16;
* one training step (B = 32, C = 925, bf16 autocast, activation checkpointing) with peak memory and img/s,
  by ``train_step_memory.measure``;
* the GEMM roofline (fp32, bf16, int8) of the same device.

Writes ``results.json`` (the ``sigrl bench`` schema, device in ``machine.gpu``; ``source`` is
``gpu_bench``) and ``report.md`` + plots beside it. Asserts nothing. Example:
``python benchmarks/gpu_bench.py --out runs/gpu-h100``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import sigrl
from sigrl.bench.flops import count_gflop, gemm_roofline
from sigrl.bench.report import render_report, write_plots
from sigrl.bench.results import Row, machine_record, new_results, save_results
from sigrl.bench.workload import vocabulary
from train_step_memory import measure as train_step  # noqa: E402 (a sibling script: benchmarks/ is on sys.path)

SOURCE = "gpu_bench"


def cuda_times(call: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    """Seconds per ``call`` measured with CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
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
        gflop: float | None, case: str = "", peak_gb: float | None = None) -> Row:
    ordered = sorted(times)
    p50 = statistics.median(ordered)
    return Row("torch", precision, engine, batch, classes, p50 * 1e3,
               ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3, items / p50, unit, SOURCE,
               case=case, gflop=gflop, provider=torch.cuda.get_device_name(0), peak_gb=peak_gb)


def image_rows(model: torch.nn.Module, classes: int, batches: list[int], repeats: int, notes: list[str]) -> list[Row]:
    """Eager fp32/bf16 and CUDA-graph bf16 at every batch, ``torch.compile`` bf16 at the largest.

    A variant that fails (a capture or compile error) becomes a note instead of ending the one-shot run.
    """
    size = model.config.vision_cfg["image_size"]
    ids = sigrl.tokenize(vocabulary(classes)).cuda()
    with torch.no_grad():
        label_emb, graph_emb = model.encode_labels(ids)
        per_image = count_gflop(lambda: model.score_images(torch.randn(1, 3, size, size, device="cuda"),
                                                           label_emb, graph_emb))
    # no autocast weight cache: a CUDA graph must not capture casts cached outside it
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    compiled = torch.compile(model.score_images)  # default mode: max-autotune would not fit the time budget
    rows = []
    for batch in batches:
        images = torch.randn(batch, 3, size, size, device="cuda")

        def eager() -> object:
            return model.score_images(images, label_emb, graph_emb)

        def eager_bf16() -> object:
            with bf16:
                return model.score_images(images, label_emb, graph_emb)

        def compiled_bf16() -> object:
            with bf16:
                return compiled(images, label_emb, graph_emb)

        variants = [("fp32", "", lambda: cuda_times(eager, repeats)),
                    ("bf16", "", lambda: cuda_times(eager_bf16, repeats)),
                    ("bf16", "cuda-graph", lambda: cuda_times(cuda_graph(eager_bf16), repeats))]
        if batch == max(batches):
            variants.append(("bf16", "torch.compile", lambda: cuda_times(compiled_bf16, repeats, warmup=5)))
        for precision, case, timed in variants:
            try:
                with torch.no_grad():
                    times = timed()
            except RuntimeError as err:
                notes.append(f"{case or 'eager'} {precision} B={batch} C={classes} failed: {str(err).splitlines()[0]}")
                continue
            rows.append(row(precision, "image_svfr", batch, classes, times, batch, "img/s", per_image * batch, case))
            print(rows[-1].label() + f": {rows[-1].throughput:,.0f} img/s", flush=True)
    return rows


def text_rows(model: torch.nn.Module, classes: int, repeats: int) -> list[Row]:
    ids = sigrl.tokenize(vocabulary(classes)).cuda()
    rows = []
    with torch.no_grad():
        work = count_gflop(lambda: model.encode_labels(ids))
        for precision, enabled in (("fp32", False), ("bf16", True)):
            def encode() -> object:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled):
                    return model.encode_labels(ids)

            rows.append(row(precision, "text_gmc", 1, classes, cuda_times(encode, repeats), 1, "vocab/s", work))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for results.json, report.md and plots")
    parser.add_argument("--config", default="vit-b16")
    parser.add_argument("--classes", type=int, nargs="+", default=[81, 1006])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py needs a CUDA device; none is visible")
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (TF32 would be a third precision)
    roofline = gemm_roofline(max_size=8192, seconds=2.0, device="cuda")
    print(f"roofline GFLOP/s: {roofline}", flush=True)
    torch.manual_seed(0)
    model = sigrl.create_model(args.config).cuda().eval()
    rows, notes = [], []
    for classes in args.classes:
        rows += image_rows(model, classes, args.batch, args.repeats, notes)
    rows += text_rows(model, 1006, args.repeats)
    del model
    torch.cuda.empty_cache()
    step = train_step(args.config, "cuda", 32, 925, True, 32, steps=3)
    rows.append(row("bf16", "train_step", 32, 925, [step["step_s"]], 32, "img/s", None, case="checkpointing",
                    peak_gb=step["peak_gb"]))
    notes.append(f"gpu_bench.py on {torch.cuda.get_device_name(0)}, {time.perf_counter() - started:.0f} s in all; "
                 "train_step is one timed mean of 3 steps (p50 = p95)")
    results = new_results(args.config, machine_record(), roofline, rows, notes)
    save_results(results, out / "results.json")
    results["rows"] = rows
    (out / "report.md").write_text(render_report(results))
    write_plots(results, out)
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")


if __name__ == "__main__":
    main()
