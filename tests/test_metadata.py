"""The engine metadata reader (sigrl.deploy.metadata): what export writes reads back whole, and a damaged or
foreign file is one clear error naming the file and the key, in the library and on the command line."""

import json

import onnx
import pytest
from stand_in_engines import write_engines

import sigrl
from sigrl.cli import main
from sigrl.deploy.engines import engine_specs
from sigrl.deploy.metadata import EngineMetadata, ExportedEngines, read_metadata


@pytest.fixture(scope="module")
def model() -> sigrl.SigRL:
    return sigrl.create_model("tiny")


def test_what_export_writes_reads_back_whole(model, tmp_path):
    exported = ExportedEngines.read(write_engines(model, tmp_path, "ab" * 32))
    assert exported.config == model.config and exported.text.checkpoint_sha256 == "ab" * 32
    assert exported.text.prompt_template == model.prompt_template and exported.image.engine == "image_svfr"
    assert [s.axis_ranges for s in exported.specs()] == [s.axis_ranges for s in engine_specs(model.config)]
    assert exported.precisions() == {"text_gmc": "fp32", "image_svfr": "fp32"}
    for metadata in (exported.text, exported.image):  # parse(props()) is the identity
        assert EngineMetadata.parse(metadata.props(), "x") == metadata


@pytest.mark.parametrize("changes, message", [
    ({"config": "{bad"}, "metadata sigrl.config is not valid (Expecting property name"),
    ({"config": json.dumps({"bogus": 1})}, "metadata sigrl.config is not valid (SigRLConfig"),
    ({"config": "[]"}, "metadata sigrl.config is not valid (a JSON dict was expected, got list)"),
    ({"axis_ranges": json.dumps({"C": [1, 2]})}, "sigrl.axis_ranges is not valid (each axis needs [min, opt, max]"),
    ({"vocabulary": json.dumps(["cat", 3])}, "metadata sigrl.vocabulary is not valid (labels must be strings)"),
    ({"opset": "eighteen"}, "metadata sigrl.opset is not valid"),
    ({"precision": "fp12"}, "records precision 'fp12', not one of"),
])
def test_damaged_metadata_is_one_error_naming_file_and_key(model, tmp_path, capsys, changes, message):
    engines = write_engines(model, tmp_path / "engines", **changes)
    with pytest.raises(ValueError) as caught:
        ExportedEngines.read(engines)
    assert str(caught.value).startswith(str(engines / "text_gmc.onnx")) and message in str(caught.value)
    assert main(["triton-repo", "--engines", str(engines), "--out", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "repo").exists()


def test_foreign_truncated_and_missing_files_are_named(model, tmp_path, capsys):
    engines = write_engines(model, tmp_path / "engines")
    foreign = onnx.load(str(engines / "image_svfr.onnx"))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(engines / "image_svfr.onnx"))
    with pytest.raises(ValueError, match=r"image_svfr\.onnx has no sigrl metadata: not exported by `sigrl export`"):
        ExportedEngines.read(engines)
    (engines / "text_gmc.onnx").write_bytes((engines / "text_gmc.onnx").read_bytes()[:40])
    with pytest.raises(ValueError, match=r"text_gmc\.onnx is not an ONNX model \(truncated or another file"):
        read_metadata(engines / "text_gmc.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.onnx is not an ONNX model \(truncated or another file: the file is"):
        read_metadata(tmp_path / "empty.onnx")
    assert main(["build-engines", "--engines", str(engines), "--out", str(tmp_path / "plans")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "text_gmc.onnx is not an ONNX model" in err
    (engines / "text_gmc.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks text_gmc\.onnx: create them with `sigrl export`"):
        ExportedEngines.read(engines)
