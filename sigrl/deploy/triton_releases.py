"""NVIDIA's Triton containers and the TensorRT each ships: the one table plans, images and manifests are tied to.

A TensorRT plan loads only in the TensorRT release it was built with (a version-compatible one also in later
releases), so ``sigrl triton-repo --triton-container`` checks plans against the serving container's TensorRT and
``sigrl deploy k8s --plans`` builds the image ``FROM`` the release that ships the plans' TensorRT. The rows live in
``sigrl/deploy/data/triton_tensorrt.json``, each with the public source its versions were read in. Standard
library only: the container build imports this module before anything else is installed.
"""

from __future__ import annotations

import json
import re
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


def same_tensorrt(a: str, b: str) -> bool:
    """True when two TensorRT versions agree in major.minor.patch (``10.8.0.43`` is ``10.8.0``): what plans need."""
    return re.findall(r"\d+", a)[:3] == re.findall(r"\d+", b)[:3]


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
