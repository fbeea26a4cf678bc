"""What ``sigrl export`` records in each engine file, written and read here only.

Every exported ONNX file carries ``metadata_props`` under the ``sigrl.`` prefix (docs/engines.md lists them).
:class:`EngineMetadata` is one file's record; :class:`ExportedEngines` is a folder of ``sigrl export``, read once
by whatever consumes it (runtimes, ``sigrl build-engines``, ``sigrl triton-repo``). Reading needs ``onnx`` but
not torch, and skips the graph: the weights are neither read nor parsed (a vit-b16 engine is ~300 MB).
"""

from __future__ import annotations

import hashlib
import json
import mmap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigrl.config import SigRLConfig
from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine, engine_specs
from sigrl.registry import MAX_CLASSES, PRECISIONS

PREFIX = "sigrl."
_JSON_KEYS = {"config": dict, "preprocess": dict, "vocabulary": list, "axis_ranges": dict}  # and their JSON types


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineMetadata:
    """One engine file's ``sigrl.*`` record: what runtimes, the plan builder and the repository builder read
    (configuration, preprocessing, vocabulary, prompt template, class range, precision, checkpoint hash), and
    where it came from (engine, opset, versions). ``precision`` is this graph's own (an int8 export keeps its
    text engine fp32). Files exported before a key existed read as its default (fp32, the default class range);
    keys sigrl no longer writes are ignored."""

    engine: str
    config: SigRLConfig
    config_name: str = ""
    prompt_template: str = ""
    preprocess: dict[str, Any] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)
    checkpoint_sha256: str = ""
    opset: int = 0
    axis_ranges: dict[str, list[int]] = field(default_factory=dict)
    precision: str = "fp32"
    sigrl_version: str = ""
    torch_version: str = ""

    @property
    def max_classes(self) -> int:
        """The largest vocabulary (C) the engine takes."""
        return int(self.axis_ranges.get("C", (1, 0, MAX_CLASSES))[2])

    def props(self) -> dict[str, str]:
        """The record as ONNX ``metadata_props`` (prefixed keys, JSON for structured values)."""
        values: dict[str, Any] = {
            "engine": self.engine, "config_name": self.config_name, "config": self.config.to_dict(),
            "prompt_template": self.prompt_template, "preprocess": self.preprocess, "vocabulary": self.vocabulary,
            "checkpoint_sha256": self.checkpoint_sha256, "opset": self.opset, "axis_ranges": self.axis_ranges,
            "precision": self.precision, "sigrl_version": self.sigrl_version, "torch_version": self.torch_version,
        }
        return {PREFIX + key: json.dumps(value) if key in _JSON_KEYS else str(value) for key, value in values.items()}

    @classmethod
    def parse(cls, props: Mapping[str, str], source: str | Path) -> EngineMetadata:
        """The record in ``props`` (ONNX ``metadata_props`` as a mapping); ValueError naming ``source`` when it
        is not a sigrl engine or records a precision sigrl does not know."""
        values = {key.removeprefix(PREFIX): value for key, value in props.items() if key.startswith(PREFIX)}
        if "config" not in values or "engine" not in values:
            raise ValueError(f"{source} has no sigrl metadata: not exported by `sigrl export`")
        known: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name not in values:
                continue
            try:
                known[name] = _parse_value(name, values[name])
            except (ValueError, TypeError) as err:
                raise ValueError(f"{source}: metadata {PREFIX}{name} is not valid ({err})") from None
        metadata = cls(**known)
        if metadata.precision not in PRECISIONS:
            raise ValueError(f"{source} records precision {metadata.precision!r}, not one of {PRECISIONS}")
        return metadata


def _parse_value(name: str, text: str) -> Any:
    """One metadata value as :class:`EngineMetadata` holds it; ValueError or TypeError when it is malformed."""
    if name == "opset":
        return int(text)
    if name not in _JSON_KEYS:
        return text
    value = json.loads(text)
    if not isinstance(value, _JSON_KEYS[name]):
        raise TypeError(f"a JSON {_JSON_KEYS[name].__name__} was expected, got {type(value).__name__}")
    if name == "config":
        return SigRLConfig(**value)
    if name == "vocabulary" and not all(isinstance(label, str) for label in value):
        raise TypeError("labels must be strings")
    if name == "axis_ranges" and not all(isinstance(r, list) and len(r) == 3 and all(isinstance(n, int) for n in r)
                                         for r in value.values()):
        raise TypeError("each axis needs [min, opt, max] integers")
    return value


def read_metadata(path: str | Path) -> EngineMetadata:
    """The record of the engine file at ``path`` (its graph and weights are skipped, not parsed)."""
    try:
        props = _model_props(Path(path))
    except ValueError as err:
        raise ValueError(f"{path} is not an ONNX model (truncated or another file: {err})") from None
    return EngineMetadata.parse(props, path)


_MODEL_PROPS_FIELD = 14  # ModelProto.metadata_props (onnx.proto); the graph, field 7, holds the weights


def _model_props(path: Path) -> dict[str, str]:
    """A serialized ModelProto's ``metadata_props``, read by walking its top-level fields and decoding only
    field 14: the graph is skipped by its length, so its pages are never read. ValueError where the bytes are
    not a protobuf message (wrong wire type, a field running past the end of the file, an empty file)."""
    from google.protobuf.message import DecodeError
    from onnx import StringStringEntryProto

    props: dict[str, str] = {}
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            raise ValueError("the file is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = 0
            while at < len(data):
                key, at = _varint(data, at)
                wire, size = key & 7, 0
                if wire == 0:
                    _, at = _varint(data, at)
                elif wire in (1, 5):
                    size = 8 if wire == 1 else 4
                elif wire == 2:
                    size, at = _varint(data, at)
                else:
                    raise ValueError(f"wire type {wire} at byte {at}")
                if at + size > len(data):
                    raise ValueError(f"a field runs past the end of the file at byte {len(data)}")
                if key >> 3 == _MODEL_PROPS_FIELD and wire == 2:
                    try:
                        entry = StringStringEntryProto.FromString(data[at:at + size])
                    except DecodeError as err:
                        raise ValueError(str(err)) from None
                    props[entry.key] = entry.value
                at += size
    return props


def _varint(data: mmap.mmap, at: int) -> tuple[int, int]:
    """The protobuf varint at ``at`` and the offset after it."""
    value = 0
    for shift in range(0, 70, 7):
        if at >= len(data):
            raise ValueError("the file ends inside a number")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
    raise ValueError(f"a number longer than 10 bytes at byte {at}")


@dataclass(frozen=True)
class ExportedEngines:
    """A folder of ``sigrl export``: both engine files' records, read once."""

    folder: Path
    text: EngineMetadata
    image: EngineMetadata

    @classmethod
    def read(cls, folder: str | Path) -> ExportedEngines:
        """The records in ``folder``; FileNotFoundError naming the missing engine files."""
        folder = Path(folder)
        missing = [s.file_name for s in (TextGMCEngine, ImageSVFREngine) if not (folder / s.file_name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: create them with `sigrl export`")
        return cls(folder, read_metadata(folder / TextGMCEngine.file_name),
                   read_metadata(folder / ImageSVFREngine.file_name))

    @property
    def config(self) -> SigRLConfig:
        """The model configuration the engines were exported from."""
        return self.text.config

    def specs(self) -> tuple[TextGMCEngine, ImageSVFREngine]:
        """Both engines' specs, with the class range they were exported for."""
        return engine_specs(self.config, self.text.max_classes)

    def precisions(self) -> dict[str, str]:
        """Each engine's precision, by engine name."""
        return {TextGMCEngine.name: self.text.precision, ImageSVFREngine.name: self.image.precision}
