"""What a hostile request costs a served repository: answer time, how long it stalls other clients, memory left.

Starts the bundled Triton on ``--repo`` (a repository from ``sigrl triton-repo``), or probes a server already
running at ``--url`` (with ``--pid``, its tritonserver process, for memory), and sends, one probe at a time while a
background client keeps tagging a small image:

* ``elongated``: one PNG of a few hundred bytes whose resize of the shorter side would make a huge image;
* ``elongated x4``: four of them in one request;
* ``oversized request``: 16 images of 19 MiB each (every image under the per-image byte cap, the request far over
  the per-request cap);
* ``largest decode``: one image of noise at the request's pixel cap, in each format the server reads.

For each it prints the probe's own answer (and time), the background client's worst latency during it against
its median before, and the resident memory of tritonserver and of the entry model's stub before and after.
Nothing is asserted; ``--json`` writes the rows. Example::

    python benchmarks/serving_probes.py --repo runs/repo --json runs/probes.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from sigrl.serving.client import SigRLClient
from sigrl.serving.server import TritonServer, stub_processes


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Background:
    """A client tagging one small image in a loop; records each request's latency and its start time."""

    def __init__(self, url: str) -> None:
        self.client = SigRLClient(url, timeout_s=300)
        self.image = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)))
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            self.client.infer([self.image], ["dog", "cat"])
            self.samples.append((start, time.perf_counter() - start))

    def __enter__(self) -> Background:
        self._thread.start()
        time.sleep(2)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()

    def worst_during(self, start: float, end: float) -> float:
        """The longest latency of a request that was in flight between ``start`` and ``end``, in ms."""
        overlapping = [latency for begun, latency in self.samples if begun <= end and begun + latency >= start]
        return 1e3 * max(overlapping, default=0.0)

    def median_before(self, start: float) -> float:
        return 1e3 * statistics.median([latency for begun, latency in self.samples if begun < start] or [0.0])


def probe(name: str, send: Callable[[], str], background: Background, pids: dict[str, int]) -> dict[str, object]:
    before = {role: rss_mb(pid) for role, pid in pids.items()}
    start = time.perf_counter()
    answer = send()
    end = time.perf_counter()
    time.sleep(1.0)  # whatever the server frees after answering
    return {"probe": name, "answer": answer[:110], "seconds": round(end - start, 3),
            "others_median_ms": round(background.median_before(start), 1),
            "others_worst_ms": round(background.worst_during(start, end), 1),
            **{f"{role}_mb_before": round(mb, 1) for role, mb in before.items()},
            **{f"{role}_mb_after": round(rss_mb(pid), 1) for role, pid in pids.items()}}


def answer_of(client: SigRLClient, images: list[bytes]) -> str:
    try:
        scores, _ = client.infer(images, ["dog", "cat"])
        return f"OK {scores.shape}"
    except Exception as err:  # the refusal is the expected answer
        return f"{type(err).__name__}: {err}"


def probes(request_pixels: int) -> dict[str, Callable[[], list[bytes]]]:
    side = int(request_pixels ** 0.5)  # smooth noise: every format but BMP stays under the byte cap at this size
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 48, 3), np.uint8)).resize(
        (side, side), Image.Resampling.BILINEAR)
    elongated = encoded(Image.new("RGB", (60_000, 1)))
    jobs: dict[str, Callable[[], list[bytes]]] = {
        "elongated": lambda: [elongated],
        "elongated x4": lambda: [elongated] * 4,
        "oversized request": lambda: [np.random.default_rng(2).bytes(19 * 2**20)] * 16,
    }
    for fmt, options in (("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"quality": 90})):
        jobs[f"largest decode {fmt}"] = lambda fmt=fmt, options=options: [encoded(noise, fmt, **options)]
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="a repository to serve with the bundled Triton")
    parser.add_argument("--url", help="probe a server already running here (gRPC HOST:PORT) instead")
    parser.add_argument("--pid", type=int, help="with --url: the tritonserver process, for memory")
    parser.add_argument("--request-pixels", type=int, default=25_000_000, help="pixels of the largest decode probe")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    server = None
    if args.url is None:
        if args.repo is None:
            parser.error("give --repo or --url")
        server = TritonServer(args.repo)
        server.start()
    url, pid = (args.url, args.pid) if server is None else (server.grpc_url, server.pid)
    rows = []
    try:
        client = SigRLClient(url, timeout_s=600, retries=0)
        stubs = {name: stub for stub, name in stub_processes(pid).items()} if pid else {}
        pids = {"tritonserver": pid, **({"entry_stub": stubs["sigrl_0_0"]} if "sigrl_0_0" in stubs else {})}
        with Background(url) as background:
            for name, make in probes(args.request_pixels).items():
                images = make()
                rows.append(probe(name, lambda images=images: answer_of(client, images), background,
                                  pids if pid else {}))
                print(json.dumps(rows[-1]), flush=True)
        client.close()
    finally:
        if server is not None:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
