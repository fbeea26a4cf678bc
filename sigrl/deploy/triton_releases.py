"""NVIDIA's Triton containers and the TensorRT each ships: the one table plans, images and manifests are tied to.

A TensorRT plan loads only in the TensorRT release it was built with (a version-compatible one also in later
releases), so ``sigrl triton-repo --triton-container`` checks plans against the serving container's TensorRT and
``sigrl deploy k8s --plans`` builds the image ``FROM`` the release that ships the plans' TensorRT. The rows live in
``sigrl/deploy/data/triton_tensorrt.json``, each with the public source its versions were read in. Standard
library only: the container build imports this module before anything else is installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"


@dataclass(frozen=True)
class TritonRelease:
    """One release of NVIDIA's Triton container: its tag, the Triton, TensorRT and CUDA it ships, and where
    those versions come from."""

    tag: str
    triton: str
    tensorrt: str
    cuda: str
    source: str


@cache
def triton_releases() -> dict[str, TritonRelease]:
    """The known releases by tag, oldest first."""
    text = resources.files("sigrl.deploy.data").joinpath("triton_tensorrt.json").read_text("utf-8")
    return {row["tag"]: TritonRelease(**row) for row in json.loads(text)["containers"]}


DEFAULT_TRITON_TAG = list(triton_releases())[-1]  # the newest known release


def parse_tensorrt_version(text: str, flag: str = "TensorRT version") -> tuple[int, ...]:
    """``10.13.3.9`` as (10, 13, 3, 9); ValueError naming ``flag`` unless it is major.minor.patch[.build]."""
    parts = text.strip().split(".")
    if not 3 <= len(parts) <= 4 or not all(part.isdigit() for part in parts):
        raise ValueError(f"{flag} must be major.minor.patch[.build] (e.g. 10.13.3), got {text!r}")
    return tuple(map(int, parts))


def same_tensorrt(a: str, b: str) -> bool:
    """Whether two TensorRT versions name the same release as far as both go (``10.8.0`` is ``10.8.0.43``):
    a plan that is not version-compatible loads only there."""
    x, y = parse_tensorrt_version(a), parse_tensorrt_version(b)
    common = min(len(x), len(y))
    return x[:common] == y[:common]


def tag_for_tensorrt(version: str) -> str:
    """The tag of the release shipping TensorRT ``version`` (ValueError naming the known ones if none does)."""
    for release in triton_releases().values():
        if same_tensorrt(release.tensorrt, version):
            return release.tag
    known = ", ".join(f"{r.tensorrt} ({r.tag})" for r in triton_releases().values())
    raise ValueError(f"no Triton release in sigrl's table ships TensorRT {version} (known: {known})")


def container_tensorrt(container: str) -> str:
    """The TensorRT version a Triton container (a tag such as ``25.01-py3``, or the full image reference) ships;
    ValueError naming the known tags and how to read an unknown container's version."""
    tag = container.removeprefix(f"{TRITON_IMAGE}:")
    releases = triton_releases()
    if tag not in releases:
        raise ValueError(f"sigrl does not know the TensorRT of Triton container {container} (it knows "
                         f"{', '.join(releases)}); `docker run --rm {TRITON_IMAGE}:{tag} "
                         'bash -c "dpkg -l | grep nvinfer"` shows it')
    return releases[tag].tensorrt
