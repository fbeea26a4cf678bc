"""What a served repository costs to start: time until Triton is ready, and the memory of each python stub.

Starts the bundled Triton on ``--repo`` (a repository from ``sigrl triton-repo``) ``--starts`` times and prints,
per start, the seconds until every model is ready and the resident memory (VmRSS) of tritonserver and of each
python-backend stub once ready. Use it to size a pod's memory, and to see what the served models import (a stub
that loads torch is several hundred MB larger). Nothing is asserted. Example::

    python benchmarks/stub_memory.py --repo runs/repo --starts 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sigrl.serving.server import TritonServer, stub_processes


def resident_mb(pid: int) -> float:
    """VmRSS of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"process {pid} reports no VmRSS")


def measure(repo: Path) -> dict[str, object]:
    """One start of Triton on ``repo``: seconds to ready, and the memory of the server and of each stub."""
    server = TritonServer(repo)
    start = time.perf_counter()
    server.start()
    try:
        ready_s = time.perf_counter() - start
        assert server.pid is not None
        stubs = {name: round(resident_mb(pid)) for pid, name in stub_processes(server.pid).items()}
        return {"ready_s": round(ready_s, 1), "stub_mb": stubs, "stubs_total_mb": sum(stubs.values()),
                "tritonserver_mb": round(resident_mb(server.pid))}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="a repository written by `sigrl triton-repo`")
    parser.add_argument("--starts", type=int, default=3, help="how many times to start the server (default 3)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for _ in range(args.starts):
        rows.append(measure(args.repo))
        print(json.dumps(rows[-1]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
