"""The container image a cluster runs: NVIDIA's Triton image at a pinned tag plus the served models' requirements.

The build file is ``Containerfile`` at the root of the source tree. It installs the project's wheel without its
dependencies (torch, open_clip, ... are for training and export) and then exactly what the python-backend models
import, read from the wheel's own metadata by :func:`served_requirements`: the ``triton`` extra of
``pyproject.toml`` is the one list of them (``triton-cpu`` adds ONNX Runtime for the python runtime's engines).

Which Triton release: plans run only on the TensorRT they were built with, so the tag follows the TensorRT version
of ``sigrl build-engines``' build record (:func:`triton_tag_for_tensorrt`); without plans the image is
:data:`DEFAULT_TRITON_TAG`. The table holds a few releases; any other tag can be given to the build and to
``sigrl deploy k8s --image`` directly.

``python3 -m sigrl.serving.container requirements EXTRA...`` prints the requirements of the extras, one per line
(what the Containerfile installs).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
DISTRIBUTION = "sigrl"
SERVED_EXTRA = "triton"  # what the entry model imports (numpy, Pillow, ftfy, regex)
PYTHON_RUNTIME_EXTRA = "triton-cpu"  # and ONNX Runtime, for the python runtime's engine models


@dataclass(frozen=True)
class TritonRelease:
    """One release of NVIDIA's Triton container: its tag, the Triton version and what it ships."""

    tag: str
    triton: str
    tensorrt: str
    cuda: str


# From NVIDIA's Triton release notes and the frameworks support matrix (the plain ``-py3`` images). A plan built
# with TensorRT X.Y.Z loads only in a release shipping X.Y.Z. This table is small on purpose; another engineer keeps
# a fuller Triton-tag / TensorRT table beside the plan builder (sigrl.deploy.tensorrt), with which it will merge.
TRITON_RELEASES = (
    TritonRelease("24.10-py3", "2.51.0", "10.5.0", "12.6.2"),  # the Triton that nvidia-pytriton 0.7 bundles
    TritonRelease("25.01-py3", "2.54.0", "10.8.0", "12.8.0"),
    TritonRelease("25.03-py3", "2.56.0", "10.9.0", "12.8.1"),
    TritonRelease("25.06-py3", "2.59.0", "10.11.0", "12.9.1"),
    TritonRelease("25.10-py3", "2.62.0", "10.13.3", "13.0.2"),
)
DEFAULT_TRITON_TAG = TRITON_RELEASES[-1].tag


def same_tensorrt(a: str, b: str) -> bool:
    """True when two TensorRT versions agree in major.minor.patch (``10.13.3.9`` is ``10.13.3``): what plans need."""
    return re.findall(r"\d+", a)[:3] == re.findall(r"\d+", b)[:3]


def triton_tag_for_tensorrt(version: str) -> str:
    """The Triton image tag whose TensorRT is ``version`` (ValueError if the table knows none)."""
    for release in TRITON_RELEASES:
        if same_tensorrt(release.tensorrt, version):
            return release.tag
    known = ", ".join(f"{r.tensorrt} ({r.tag})" for r in TRITON_RELEASES)
    raise ValueError(f"no Triton release in sigrl's table ships TensorRT {version} (known: {known}); rebuild the plans "
                     "in one of those containers, or pass --image built FROM the Triton release that ships it")


def triton_image(tag: str = DEFAULT_TRITON_TAG) -> str:
    """NVIDIA's Triton image at ``tag``."""
    return f"{TRITON_IMAGE}:{tag}"


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
