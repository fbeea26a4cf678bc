"""The container image a cluster runs: NVIDIA's Triton image at a pinned tag plus the served models' requirements.

The build file is ``Containerfile`` at the root of the source tree. It installs the project's wheel without its
dependencies (torch, open_clip, ... are for training and export) and then exactly what the python-backend models
import, read from the wheel's own metadata by :func:`served_requirements`: the ``triton`` extra of
``pyproject.toml`` is the one list of them (``triton-cpu`` adds ONNX Runtime for the python runtime's engines).

Which Triton release: plans run only on the TensorRT they were built with, so the tag follows the TensorRT version
of ``sigrl build-engines``' build record (:mod:`sigrl.deploy.triton_releases`); without plans the image is the
newest release that table knows. Any other tag can be given to the build and to ``sigrl deploy k8s`` directly.

``python3 -m sigrl.serving.container requirements EXTRA...`` prints the requirements of the extras, one per line
(what the Containerfile installs).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from importlib import metadata

DISTRIBUTION = "sigrl"
SERVED_EXTRA = "triton"  # what the entry model imports (numpy, Pillow, ftfy, regex)
PYTHON_RUNTIME_EXTRA = "triton-cpu"  # and ONNX Runtime, for the python runtime's engine models


def served_requirements(extras: Iterable[str], requires: Iterable[str] | None = None) -> list[str]:
    """The requirements of ``extras`` of the installed sigrl (its metadata's ``Requires-Dist``), an extra that names
    sigrl's own extras expanded, markers dropped, each once. ``requires`` stands in for the metadata (tests)."""
    lines = list(metadata.requires(DISTRIBUTION) or [] if requires is None else requires)
    pending, seen, found = list(extras), set(), []
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        matched = [line for line in lines if re.search(rf"""extra\s*==\s*['"]{re.escape(extra)}['"]""", line)]
        if not matched:
            raise ValueError(f"sigrl has no extra {extra!r}")
        for line in matched:
            requirement = line.split(";")[0].strip()
            own = re.fullmatch(rf"{DISTRIBUTION}\[([^\]]+)\]", requirement.replace(" ", ""))
            if own:
                pending += own.group(1).split(",")
            elif requirement not in found:
                found.append(requirement)
    return found


def main(argv: list[str] | None = None) -> int:
    """``requirements EXTRA...``: print the requirements of the extras, one per line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "requirements":
        print("usage: python3 -m sigrl.serving.container requirements EXTRA...", file=sys.stderr)
        return 2
    try:
        print("\n".join(served_requirements(args[1:])))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
