"""Probes of a running server by a hostile client or local user, run as a script (often as another user, with
``setpriv``) and reporting what got through as one JSON object on stdout.

``admin``: read what another local user can read of the server (its process arguments, environment, work
folder, repository, shared memory) and use it, with clients that write gRPC over HTTP/2 and HTTP/1.1 by hand,
against every restricted API; ``watch``: poll ``/dev/shm`` (and the server's view of it) until killed,
opening every region of a sigrl server that appears, and print what it saw when it gets SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from raw_protocol import grpc_call, http_request

# gRPC methods and HTTP routes of the restricted APIs, each with an empty or minimal request.
RESTRICTED_GRPC = ("RepositoryIndex", "LogSettings", "SystemSharedMemoryStatus", "CudaSharedMemoryStatus",
                   "TraceSetting", "RepositoryModelUnload")
RESTRICTED_HTTP = (("POST", "/v2/repository/index", b"{}"), ("GET", "/v2/logging", b""),
                   ("POST", "/v2/logging", b'{"log_verbose_level": 1}'), ("GET", "/v2/systemsharedmemory/status", b""),
                   ("GET", "/v2/trace/setting", b""))
GRPC_PREFIX = b"triton-grpc-protocol-"


def restricted_argument(pid: int) -> tuple[bytes, bytes] | None:
    """(header, value) of the server's ``--grpc-restricted-protocol`` argument, as any local user reads it."""
    for argument in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
        if argument.startswith(b"--grpc-restricted-protocol="):
            header, _, value = argument.split(b":", 1)[1].partition(b"=")
            return header, value
    return None


def header_variants(header: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    """Every spelling of the header a client could try: as given, lower case, with the colon or space replaced,
    cut at the colon (what an HTTP/1.1 parser would read), and the value with its line breaks kept or folded."""
    names = {header, header.lower(), header.replace(b" ", b"-"), header.replace(b":", b"-"),
             header.split(b":")[0], header.split(b":")[-1], header.lower().replace(b" ", b"").replace(b":", b"")}
    values = {value, value.replace(b"\n", b"\r\n "), value.strip()}
    return [(name, v) for name in sorted(names) if name for v in sorted(values)]


def probe_admin(pid: int, grpc_address: str, http_address: str) -> dict[str, object]:
    """Try every restricted API with what this user can learn; report what was read and what answered OK."""
    report: dict[str, object] = {"uid": os.getuid(), "read": {}, "grpc_ok": [], "http_ok": [], "tries": 0}
    read = report["read"]
    for name in ("environ", "root/dev/shm", "cwd"):
        try:
            path = Path(f"/proc/{pid}/{name}")
            read[name] = sorted(p.name for p in path.iterdir()) if path.is_dir() else len(path.read_bytes())
        except OSError as err:
            read[name] = f"denied ({err.strerror})"
    argument = restricted_argument(pid)
    read["cmdline"] = "restricted header found" if argument else "no restricted argument"
    header, value = argument or (b"sigrl-admin-key", b"guess")
    tries = [(GRPC_PREFIX + name, v) for name, v in header_variants(header, value)]
    tries += [(name, v) for name, v in header_variants(header, value)]  # without Triton's gRPC prefix
    host, port = grpc_address.rsplit(":", 1)
    for method in RESTRICTED_GRPC:
        for name, v in [(None, None), *tries]:
            result = grpc_call(host, int(port), method, headers=[] if name is None else [(name, v)])
            report["tries"] += 1
            if result.ok:
                report["grpc_ok"].append([method, None if name is None else name.decode(errors="replace")])
    host, port = http_address.rsplit(":", 1)
    for verb, route, body in RESTRICTED_HTTP:
        for name, v in [(None, None), *header_variants(header, value)]:
            extra = b"" if name is None else name + b": " + v + b"\r\n"
            request = (f"{verb} {route} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n".encode()
                       + extra + b"Connection: close\r\n\r\n" + body)
            result = http_request(host, int(port), request)
            report["tries"] += 1
            if result.status == 200:
                report["http_ok"].append([route, None if name is None else name.decode(errors="replace")])
    return report


def watch(prefix: str, interval: float) -> dict[str, object]:
    """Poll for shared-memory regions whose name starts with ``prefix`` until SIGTERM; open each one seen."""
    seen: set[str] = set()
    opened: set[str] = set()
    polls = 0
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("watching", flush=True)
    while not stop:
        polls += 1
        places = [Path("/dev/shm")] + [Path(f"/proc/{pid}/root/dev/shm") for pid in _pids_named("tritonserver")]
        for place in places:
            try:
                names = [entry.name for entry in os.scandir(place) if entry.name.startswith(prefix)]
            except OSError:
                continue
            for name in names:
                seen.add(name)
                try:
                    os.close(os.open(place / name, os.O_RDONLY))
                    opened.add(name)
                except OSError:
                    pass
        time.sleep(interval)
    return {"uid": os.getuid(), "polls": polls, "seen": sorted(seen), "opened": sorted(opened)}


def _pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    admin = commands.add_parser("admin")
    admin.add_argument("--pid", type=int, required=True)
    admin.add_argument("--grpc", required=True)
    admin.add_argument("--http", required=True)
    watcher = commands.add_parser("watch")
    watcher.add_argument("--prefix", default="sigrl_triton_")
    watcher.add_argument("--interval", type=float, default=0.001)
    args = parser.parse_args()
    report = probe_admin(args.pid, args.grpc, args.http) if args.command == "admin" else watch(args.prefix,
                                                                                               args.interval)
    print(json.dumps(report), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
