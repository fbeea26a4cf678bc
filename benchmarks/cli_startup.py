"""Start-up cost of the client side: ``import sigrl.serving.client``, ``import tritonclient.grpc`` and a whole
``sigrl tag`` call that finds no server, each in fresh processes; also whether torch was imported.

Prints the median of ``--repeats`` runs; asserts nothing. Example: ``python benchmarks/cli_startup.py``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def import_seconds(module: str) -> tuple[float, bool]:
    """Cumulative import time of ``module`` from ``python -X importtime``, and whether torch got imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                            capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in result.stderr.splitlines() if line.startswith("import time:")]
    cumulative = {row[2].strip(): int(row[1]) for row in rows if len(row) == 3 and row[1].strip().isdigit()}
    return cumulative[module] / 1e6, "torch" in cumulative


def tag_seconds(image: Path, port: int) -> float:
    """Wall time of ``sigrl tag IMAGE`` against a port nothing listens on (it exits 2 after the first call)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sigrl.cli", "tag", str(image), "--url", f"127.0.0.1:{port}"],
                   capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as work:
        image = Path(work) / "a.png"
        image.write_bytes(b"x")
        for module in ("sigrl.serving.client", "tritonclient.grpc"):
            runs = [import_seconds(module) for _ in range(args.repeats)]
            print(f"import {module}: median {statistics.median(s for s, _ in runs):.3f} s, "
                  f"torch imported: {any(t for _, t in runs)}")
        times = [tag_seconds(image, port) for _ in range(args.repeats)]
        print(f"sigrl tag (no server at the address): median {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
