"""The SigRL model repository served by a real Triton Inference Server, checked with the real tritonclient.

One server (the binary bundled in nvidia-pytriton, CPU) serves a ``python``-runtime repository built
from the trained tiny engines for the whole module. Served results are compared with in-process
ONNX Runtime (bit for bit) and PyTorch (within 1e-5); then the vocabulary cache, dynamic batching,
per-request errors, direct engine calls and concurrent clients are exercised; the last test stops
the server and checks that nothing is left behind.
"""

from __future__ import annotations

import functools
import io
import json
import queue
import re
import statistics
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytriton", reason='needs nvidia-pytriton (pip install -c constraints.txt -e ".[serve]")')

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from test_serving_server import assert_nothing_left
from tritonclient.utils import InferenceServerException

import sigrl
from sigrl.data.transforms import build_transform
from sigrl.deploy.metadata import EngineMetadata, read_metadata
from sigrl.deploy.runtimes import OnnxRuntime, TorchRuntime, prepare_token_ids
from sigrl.serving.repository import build_repository
from sigrl.serving.server import TritonServer

MAX_IMAGE_BYTES = 64 * 1024
MAX_REQUEST_BYTES = 128 * 1024
MAX_LABEL_TOKENS = 40
MODELS = ("image_svfr", "sigrl", "text_gmc")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def png_bytes(width: int, height: int, seed: int) -> bytes:
    """A random RGB image as PNG bytes (non-square sizes exercise the resize + centre crop)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def local_pixels(images: Sequence[bytes]) -> np.ndarray:
    """The evaluation transform applied in this process to the decoded images."""
    transform = build_transform(64, False, MEAN, STD)
    return np.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")).numpy() for b in images])


def bytes_tensor(name: str, rows: list[list[bytes]]) -> grpcclient.InferInput:
    array = np.empty((len(rows), len(rows[0]) if rows else 0), dtype=object)
    for i, row in enumerate(rows):
        array[i, :] = row
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def numpy_tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def entry_inputs(images: Sequence[bytes], labels: Sequence[str | bytes] | None = None,
                 top_k: int | None = None) -> list[grpcclient.InferInput]:
    """Inputs of one ``sigrl`` request: N images, the same label row for each, one top_k for each."""
    inputs = [bytes_tensor("image", [[b] for b in images])]
    if labels is not None:
        row = [n.encode() if isinstance(n, str) else n for n in labels]
        inputs.append(bytes_tensor("labels", [row] * len(images)))
    if top_k is not None:
        inputs.append(numpy_tensor("top_k", np.full((len(images), 1), top_k, np.int32), "INT32"))
    return inputs


def infer_concurrently(client: grpcclient.InferenceServerClient, model: str,
                       requests: Sequence[list[grpcclient.InferInput]]) -> list:
    """Send all ``requests`` at once (async gRPC) and return each one's result or exception, in order."""
    done: queue.Queue = queue.Queue()
    for index, inputs in enumerate(requests):
        client.async_infer(model, inputs, callback=lambda result, error, i=index: done.put((i, result, error)))
    answers: list = [None] * len(requests)
    for _ in requests:
        index, result, error = done.get(timeout=60)
        answers[index] = error if error is not None else result
    return answers


def model_stats(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model`` so far."""
    stats = client.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.execution_count


def settled_stats(client: grpcclient.InferenceServerClient, model: str, quiet: float = 0.3) -> tuple[int, int]:
    """``model_stats`` once they stop changing: counts of earlier requests can land after their responses."""
    last = model_stats(client, model)
    while True:
        time.sleep(quiet)
        now = model_stats(client, model)
        if now == last:
            return now
        last = now


def stats_after(client: grpcclient.InferenceServerClient, model: str, before: tuple[int, int],
                inferences: int, timeout: float = 10.0) -> tuple[int, int]:
    """(inferences, executions) of ``model`` since ``before``, once ``inferences`` are counted.

    The python backend reports a batch's statistics after its responses are sent, so a client can
    see its answers a moment before the counts include them.
    """
    deadline = time.monotonic() + timeout
    while True:
        counts = tuple(now - then for now, then in zip(model_stats(client, model), before))
        if counts[0] >= inferences or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def entry_counters(server: TritonServer) -> dict[str, float]:
    """The entry model's counters on ``/metrics``, as {'sigrl_engine_runs_total{engine="image_svfr"}': value}."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in re.findall(r"^(sigrl_\S+) (\S+)$", text, re.MULTILINE)}


def counters_after(server: TritonServer, before: dict[str, float], expected: dict[str, float],
                   timeout: float = 10.0) -> dict[str, float]:
    """Increments of the entry counters since ``before``, once those in ``expected`` reached their values."""
    deadline = time.monotonic() + timeout
    while True:
        now = entry_counters(server)
        delta = {name: value - before.get(name, 0.0) for name, value in now.items()}
        if all(delta.get(name, 0.0) >= value for name, value in expected.items()) or time.monotonic() > deadline:
            return delta


TEXT_RUNS, IMAGE_RUNS = 'sigrl_engine_runs_total{engine="text_gmc"}', 'sigrl_engine_runs_total{engine="image_svfr"}'
HITS, MISSES = 'sigrl_vocabulary_lookups_total{result="hit"}', 'sigrl_vocabulary_lookups_total{result="miss"}'


@pytest.fixture(scope="module")
def engines(tiny_engines) -> Path:
    return tiny_engines[1]


@pytest.fixture(scope="module")
def metadata(engines) -> EngineMetadata:
    return read_metadata(engines / "text_gmc.onnx")


@pytest.fixture(scope="module")
def vocabulary(tiny_engines) -> list[str]:
    return sigrl.load_checkpoint(tiny_engines[0]).vocabulary


@pytest.fixture(scope="module")
def ort_runtime(engines) -> OnnxRuntime:
    return OnnxRuntime(engines, device="cpu")


@pytest.fixture(scope="module")
def server(engines, tmp_path_factory):
    repo = build_repository(engines, "python", tmp_path_factory.mktemp("triton") / "repo",
                            max_image_bytes=MAX_IMAGE_BYTES, max_request_bytes=MAX_REQUEST_BYTES,
                            max_label_tokens=MAX_LABEL_TOKENS, cache_size=8)
    running = TritonServer(repo)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def tokens(labels: Sequence[str], template: str) -> np.ndarray:
    return prepare_token_ids(sigrl.tokenize(list(labels), template))


# ------------------------------------------------------------------------------ health, metadata, parity


def test_health_and_metadata_over_grpc_and_http(server, client):
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        for transport in (client, http):
            assert transport.is_server_live() and transport.is_server_ready()
            assert all(transport.is_model_ready(name) for name in MODELS)
        entry = client.get_model_metadata("sigrl")
        assert {(t.name, t.datatype, tuple(t.shape)) for t in entry.inputs} == {
            ("image", "BYTES", (-1, 1)), ("labels", "BYTES", (-1, -1)), ("top_k", "INT32", (-1, 1))}
        assert {(t.name, t.datatype, tuple(t.shape)) for t in entry.outputs} == {
            ("scores", "FP32", (-1, -1)), ("top_labels", "BYTES", (-1, -1)), ("top_scores", "FP32", (-1, -1))}
        image = http.get_model_metadata("image_svfr")
        assert {t["name"]: (t["datatype"], t["shape"]) for t in image["inputs"]} == {
            "images": ("FP32", [-1, 3, 64, 64]), "label_emb": ("FP32", [-1, 64]), "graph_emb": ("FP32", [-1, 64])}
        config = http.get_model_config("sigrl")
        assert config["parameters"]["max_image_bytes"]["string_value"] == str(MAX_IMAGE_BYTES)
    finally:
        http.close()


def test_engine_models_equal_in_process_onnxruntime_bit_for_bit(client, ort_runtime, vocabulary, metadata):
    ids = tokens(vocabulary, metadata.prompt_template)
    text = client.infer("text_gmc", [numpy_tensor("token_ids", ids, "INT32")])
    label_emb, graph_emb = ort_runtime.encode_labels(ids)
    np.testing.assert_array_equal(text.as_numpy("label_emb"), label_emb)
    np.testing.assert_array_equal(text.as_numpy("graph_emb"), graph_emb)

    images = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    inputs = [numpy_tensor("images", images, "FP32"), numpy_tensor("label_emb", label_emb, "FP32"),
              numpy_tensor("graph_emb", graph_emb, "FP32")]
    served = client.infer("image_svfr", inputs).as_numpy("scores")
    assert served.shape == (3, len(vocabulary))
    np.testing.assert_array_equal(served, ort_runtime.score_images(images, label_emb, graph_emb))


def test_entry_scores_equal_in_process_preprocessing_and_engines(client, ort_runtime, tiny_engines, vocabulary,
                                                                 metadata):
    """Bit for bit: the server decodes, transforms and scores exactly as this process does with the same
    libraries, and a request with three images is one ``image_svfr`` call on the same batch."""
    images = [png_bytes(96, 80, 1), png_bytes(64, 64, 2), png_bytes(70, 120, 3)]
    labels = ["cyan", "star", "red", "circle", "made-up thing"]
    result = client.infer("sigrl", entry_inputs(images, labels, top_k=3))
    scores = result.as_numpy("scores")
    pixels = local_pixels(images)
    token_ids = sigrl.tokenize(labels, metadata.prompt_template)
    np.testing.assert_array_equal(scores, ort_runtime.predict(pixels, token_ids))
    reference = TorchRuntime(sigrl.load_checkpoint(tiny_engines[0])).predict(pixels, token_ids)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-5)

    best = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    assert result.as_numpy("top_labels").tolist() == [[labels[c].encode() for c in row] for row in best]
    np.testing.assert_array_equal(result.as_numpy("top_scores"), np.take_along_axis(scores, best, axis=1))

    default = client.infer("sigrl", entry_inputs(images))  # no labels: the trained vocabulary, default top-k 5
    np.testing.assert_array_equal(default.as_numpy("scores"),
                                  ort_runtime.predict(pixels, sigrl.tokenize(vocabulary, metadata.prompt_template)))
    assert default.as_numpy("top_labels").shape == (3, 5)


def test_second_repository_bls_engines_and_served_thresholds(engines, ort_runtime, metadata, tmp_path, capsys):
    """A repository with ``entry_engines="bls"`` (the GPU runtimes' path) and served thresholds.

    The entry model calls ``text_gmc`` and ``image_svfr`` (their own statistics count the calls), answers
    bit for bit as in process, and its ``tags`` are the labels at or above their thresholds, which
    ``sigrl tag`` prints when it applies no thresholds of its own.
    """
    from sigrl.cli import main
    from sigrl.thresholds import Thresholds

    images, labels = [png_bytes(96, 80, 1), png_bytes(64, 64, 2)], ["cyan", "star", "red"]
    expected = ort_runtime.predict(local_pixels(images), sigrl.tokenize(labels, metadata.prompt_template))
    # cyan: always a tag; star: never (no default); red: between the two images' scores, so one image each way
    thresholds = Thresholds({"cyan": -1.0, "red": float(expected[:, 2].mean())})
    assert expected[0, 2] != expected[1, 2]
    repo = build_repository(engines, "python", tmp_path / "repo", entry_engines="bls", thresholds=thresholds)
    assert "local_engines" not in json.loads((repo / "sigrl" / "1" / "sigrl.json").read_text())
    with TritonServer(repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        result = client.infer("sigrl", entry_inputs(images, labels))
        assert [model_stats(client, name)[1] for name in ("text_gmc", "image_svfr")] == [1, 1]  # the BLS calls
        assert entry_counters(server)[IMAGE_RUNS] == 1
        client.close()
        np.testing.assert_array_equal(result.as_numpy("scores"), expected)
        served = [[name.decode() for name in row if name] for row in result.as_numpy("tags")]
        assert served == [[name for name, _ in row] for row in thresholds.tags(expected, labels)]
        assert sorted(map(len, served)) == [1, 2] and all(row[0] == "cyan" or "red" in row for row in served)

        path = tmp_path / "image.png"
        path.write_bytes(images[0])
        assert main(["tag", str(path), "--url", server.grpc_url, "--labels", ",".join(labels), "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert [entry["label"] for entry in printed["top"]] == served[0]


def poisoned_engines(engines: Path, out: Path, engine: str) -> Path:
    """A copy of ``engines`` whose ``engine`` file has one weight matrix set to NaN: a model that cannot score."""
    import onnx
    from onnx import numpy_helper

    out.mkdir()
    for name in ("text_gmc.onnx", "image_svfr.onnx"):
        model = onnx.load(engines / name)
        if name == f"{engine}.onnx":
            def matrices(graph):  # the weights, in the main graph and in loop bodies
                yield from (t for t in graph.initializer if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT)
                for node in graph.node:
                    for attribute in node.attribute:
                        if attribute.type == onnx.AttributeProto.GRAPH:
                            yield from matrices(attribute.g)
            weight = max(matrices(model.graph), key=lambda t: t.dims[0] * t.dims[1])
            weight.CopyFrom(numpy_helper.from_array(np.full(tuple(weight.dims), np.nan, np.float32), weight.name))
        onnx.save(model, out / name)
    return out


@pytest.mark.parametrize("engine", ["image_svfr", "text_gmc"])
def test_a_request_the_engines_cannot_score_is_refused_not_answered_with_nan(engine, engines, tmp_path):
    """Engines whose outputs are not finite (here a weight set to NaN): the entry answers INVALID_ARGUMENT naming
    the image or the labels, never OK with NaN scores, caches nothing, and keeps serving."""
    repo = build_repository(poisoned_engines(engines, tmp_path / "engines", engine), "python", tmp_path / "repo")
    expected = {"image_svfr": "image 0 cannot be scored: the image engine gives non-finite scores for it",
                "text_gmc": "labels: the text engine cannot encode label 0"}[engine]
    with TritonServer(repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for _ in range(2):  # the second time too: a failed vocabulary is not cached
            with pytest.raises(InferenceServerException, match=re.escape(expected)) as raised:
                client.infer("sigrl", entry_inputs([png_bytes(64, 64, 4)], ["red", "blue"]))
            assert_client_error(raised.value)
        assert client.is_server_ready() and client.is_model_ready("sigrl")
        client.close()


# ------------------------------------------------------------------------------ cache and batching


def test_vocabulary_cache_hit_is_faster_than_a_miss(server, client):
    """500 made-up labels: a miss tokenises them and runs ``text_gmc``; a hit reuses the embeddings.

    Each round asks a new order of the same labels (a miss: the key is the ordered tuple), then the
    same order again (a hit). The entry model's counters on ``/metrics`` count lookups and text runs.
    """
    image = [png_bytes(64, 64, 7)]
    names = [f"made-up label {i}" for i in range(500)]
    rng = np.random.default_rng(0)
    misses, hits = [], []
    before = entry_counters(server)
    for _ in range(5):
        order = [names[i] for i in rng.permutation(len(names))]
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            client.infer("sigrl", entry_inputs(image, order, top_k=1))
            timings.append(time.perf_counter() - start)
        misses.append(timings[0])
        hits.append(timings[1])
    counted = counters_after(server, before, {HITS: 5, MISSES: 5})
    assert (counted[HITS], counted[MISSES], counted[TEXT_RUNS]) == (5, 5, 5)  # one text run per miss, none per hit
    miss, hit = statistics.median(misses), statistics.median(hits)
    print(f"\nvocabulary of 500 labels: cache miss {miss * 1e3:.1f} ms, hit {hit * 1e3:.1f} ms (medians of 5)")
    assert hit < 0.7 * miss


def test_dynamic_batching_merges_concurrent_requests(server, client):
    """32 concurrent requests, half against 12 labels and half against 5 (ragged labels batch together):
    fewer executions than requests, and one image engine run per vocabulary of a batch."""
    image = [png_bytes(64, 64, 11)]
    first = [f"label {i}" for i in range(12)]
    second = [f"other {i}" for i in range(5)]
    client.infer("sigrl", entry_inputs(image, first, 2))  # encode both vocabularies before counting
    client.infer("sigrl", entry_inputs(image, second, 2))
    entry_before, counters_before = settled_stats(client, "sigrl"), entry_counters(server)
    requests = [entry_inputs(image, first if i % 2 else second, 2) for i in range(32)]
    answers = infer_concurrently(client, "sigrl", requests)
    assert all(not isinstance(a, Exception) for a in answers), [a for a in answers if isinstance(a, Exception)]
    assert [a.as_numpy("scores").shape[1] for a in answers] == [12 if i % 2 else 5 for i in range(32)]
    inferences, executions = stats_after(client, "sigrl", entry_before, 32)
    image_calls = counters_after(server, counters_before, {IMAGE_RUNS: executions})[IMAGE_RUNS]
    print(f"\nsigrl: {inferences} inferences in {executions} executions; image engine: {image_calls:.0f} runs")
    assert inferences == 32 and executions < inferences
    assert image_calls <= 2 * executions and image_calls < 32


# ------------------------------------------------------------------------------ errors


def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


@functools.cache
def _oversized() -> tuple[bytes, bytes, bytes, bytes]:
    """A TIFF, a 6000×5000 PNG (30 MP: over the per-image cap), a 5000×4000 PNG (20 MP) and a 4000×1 PNG (a few
    bytes whose resize would make 73 × 292,000 pixels), all small in bytes."""
    return (encoded(Image.new("RGB", (8, 8)), "TIFF"), encoded(Image.new("L", (6000, 5000))),
            encoded(Image.new("L", (5000, 4000))), encoded(Image.new("RGB", (4000, 1))))


def _bad_requests(good: bytes) -> dict[str, tuple[list[grpcclient.InferInput], str]]:
    """Requests that must fail (INVALID_ARGUMENT), each with the message its error must contain."""
    tiff, huge, large, elongated = _oversized()
    varying = bytes_tensor("labels", [[b"a", b"b"], [b"a", b"c"]])
    return {
        "corrupt image": (entry_inputs([b"\x89PNG but not really"], ["a"]), "image 0 is not in a format this server"),
        "missing image": ([bytes_tensor("labels", [[b"a"]])], "the required input 'image' is missing"),
        "unsupported format": (entry_inputs([tiff], ["a"]), "image 0 is not in a format this server reads"),
        "too many pixels": (entry_inputs([huge], ["a"]), "image 0 is 6000x5000 pixels, over the limit of 25000000"),
        "too many pixels per request": (entry_inputs([large, large], ["a"]),
                                        "have 40000000 pixels in all, over the limit of 25000000"),
        "elongated image": (entry_inputs([good, elongated], ["a"]),
                            "image 1 is 4000x1 pixels: resizing its shorter side to 73 would make 21316000 pixels"),
        "request bytes": (entry_inputs([b"x" * (MAX_IMAGE_BYTES - 1)] * 3, ["a"]),
                          f"{3 * (MAX_IMAGE_BYTES - 1)} bytes in all, over the limit of {MAX_REQUEST_BYTES}"),
        "label characters": (entry_inputs([good], ["a", "q" * 100_000]), "label 1 is over the limit of 200 char"),
        "label tokens": (entry_inputs([good], ["a", "dog " * 45]), "label 1 has 45 tokens, over the limit of 40"),
        "same prompt after normalisation": (entry_inputs([good], ["Red circle", "blue", "red  CIRCLE"]),
                                            "labels 0 ('Red circle') and 2 ('red  CIRCLE') are the same prompt"),
        "special token": (entry_inputs([good], ["<start_of_text>"]), "label 0 contains a special token"),
        "truncated image": (entry_inputs([good[:100]], ["a"]), "image 0 cannot be decoded"),
        "empty image": (entry_inputs([b""], ["a"]), "image 0 is empty"),
        "image over the cap": (entry_inputs([b"x" * (MAX_IMAGE_BYTES + 1)], ["a"]),
                               f"image 0 is {MAX_IMAGE_BYTES + 1} bytes, over the limit of {MAX_IMAGE_BYTES} bytes"),
        "empty label list": (entry_inputs([good], []), "the label list is empty"),
        "duplicate labels": (entry_inputs([good], ["cat", "dog", "fish", "bird", "cat"]),
                             "duplicate label 'cat' at positions 0 and 4"),
        "non-UTF-8 label": (entry_inputs([good], ["a", "b", "c", b"\xff\xfe"]), "label 3 is not valid UTF-8"),
        "blank label": (entry_inputs([good], ["a", "   "]), "label 1 is blank"),
        "too many labels": (entry_inputs([good], [f"l{i}" for i in range(1025)]),
                            "1025 labels, more than the 1024 this server accepts"),
        "top_k below 1": (entry_inputs([good], ["a"], top_k=0), "top_k must be at least 1, got 0"),
        "labels differ per image": ([bytes_tensor("image", [[good], [good]]), varying],
                                    "the labels of image 1 differ from those of image 0"),
    }


BAD_CASES = list(_bad_requests(b"").keys())


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_its_request_and_the_server_keeps_serving(client, case):
    good = png_bytes(64, 64, 5)
    inputs, message = _bad_requests(good)[case]
    with pytest.raises(InferenceServerException, match=re.escape(message)) as raised:
        client.infer("sigrl", inputs)
    assert_client_error(raised.value)
    assert client.is_server_ready() and client.is_model_ready("sigrl")
    assert client.infer("sigrl", entry_inputs([good], ["a", "b"])).as_numpy("scores").shape == (1, 2)


def assert_client_error(error: InferenceServerException) -> None:
    """A client mistake: INVALID_ARGUMENT, and no traceback or server path in the message."""
    assert error.status() == "StatusCode.INVALID_ARGUMENT", (error.status(), error.message())
    assert "Traceback" not in error.message() and ".py" not in error.message() and "/tmp" not in error.message()


def test_images_are_scored_as_displayed(client):
    """A JPEG stored sideways with the EXIF tag that displays it upright scores as the upright image."""
    pixels = np.random.default_rng(8).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    sideways = encoded(Image.fromarray(np.rot90(pixels, 1).copy()), "PNG", exif=exif)
    upright = encoded(Image.fromarray(pixels), "PNG")
    labels = ["red", "circle", "star"]
    scores = [client.infer("sigrl", entry_inputs([b], labels)).as_numpy("scores") for b in (sideways, upright)]
    np.testing.assert_array_equal(scores[0], scores[1])


def test_bad_requests_do_not_fail_good_ones_batched_with_them(client):
    good = png_bytes(64, 64, 6)
    bad = _bad_requests(good)
    requests, messages = [], []
    for case in BAD_CASES:
        requests += [bad[case][0], entry_inputs([good], ["x", "y", "z"], 2)]
        messages += [bad[case][1], None]
    answers = infer_concurrently(client, "sigrl", requests)
    for answer, message in zip(answers, messages):
        if message is None:
            assert not isinstance(answer, Exception), answer
            assert answer.as_numpy("top_labels").shape == (1, 2)
        else:
            assert isinstance(answer, InferenceServerException) and message in answer.message()


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("text_gmc", [("token_ids", np.zeros((2, 5), np.float32), "FP32")],
         "inference input 'token_ids' data-type is 'FP32', but model 'text_gmc' expects 'INT32'"),
        ("text_gmc", [("token_ids", np.zeros(5, np.int32), "INT32")], "unexpected shape for input 'token_ids'"),
        ("text_gmc", [("token_ids", np.zeros((2, 78), np.int32), "INT32")],
         r"text_gmc: axis L of 'token_ids' is 78, outside the engine's range \[2, 77\]"),
        ("image_svfr", [("images", np.zeros((1, 3, 64, 64), np.float64), "FP64"),
                        ("label_emb", np.zeros((3, 64), np.float32), "FP32"),
                        ("graph_emb", np.zeros((3, 64), np.float32), "FP32")],
         "inference input 'images' data-type is 'FP64', but model 'image_svfr' expects 'FP32'"),
        ("image_svfr", [("images", np.zeros((1, 3, 32, 32), np.float32), "FP32"),
                        ("label_emb", np.zeros((3, 64), np.float32), "FP32"),
                        ("graph_emb", np.zeros((3, 64), np.float32), "FP32")],
         "unexpected shape for input 'images'"),
        ("image_svfr", [("images", np.zeros((1, 3, 64, 64), np.float32), "FP32"),
                        ("label_emb", np.zeros((3, 64), np.float32), "FP32"),
                        ("graph_emb", np.zeros((4, 64), np.float32), "FP32")],
         "image_svfr: axis C of 'graph_emb' is 4, but 3 elsewhere"),
        ("image_svfr", [("images", np.zeros((33, 3, 64, 64), np.float32), "FP32"),
                        ("label_emb", np.zeros((3, 64), np.float32), "FP32"),
                        ("graph_emb", np.zeros((3, 64), np.float32), "FP32")],
         r"image_svfr: axis B of 'images' is 33, outside the engine's range \[1, 32\]"),
        ("text_gmc", [("token_ids", np.array([[49406, 60000, 49407]], np.int32), "INT32")],
         r"text_gmc: token_ids\[0, 1\] is 60000, outside the vocabulary \[0, 49408\)"),
        ("text_gmc", [("token_ids", np.array([[49406, -5, 49407]], np.int32), "INT32")],
         r"text_gmc: token_ids\[0, 1\] is -5"),
        ("text_gmc", [("token_ids", np.array([[1, 2, 3]], np.int32), "INT32")],
         "text_gmc: token_ids row 0 is not a tokenized prompt"),
        ("image_svfr", [("images", np.full((1, 3, 64, 64), np.nan, np.float32), "FP32"),
                        ("label_emb", np.zeros((3, 64), np.float32), "FP32"),
                        ("graph_emb", np.zeros((3, 64), np.float32), "FP32")],
         "image_svfr: input 'images' holds NaN or infinite values"),
        ("image_svfr", [("images", np.zeros((1, 3, 64, 64), np.float32), "FP32"),
                        ("label_emb", np.full((3, 64), np.inf, np.float32), "FP32"),
                        ("graph_emb", np.zeros((3, 64), np.float32), "FP32")],
         "image_svfr: input 'label_emb' holds NaN or infinite values"),
        # finite inputs the engine cannot compute with: the products overflow float32
        ("image_svfr", [("images", np.full((2, 3, 64, 64), 3e38, np.float32), "FP32"),
                        ("label_emb", np.ones((3, 64), np.float32), "FP32"),
                        ("graph_emb", np.ones((3, 64), np.float32), "FP32")],
         r"image_svfr: these inputs give non-finite 'scores' \(rows \[0, 1\]\): the engine cannot compute with them"),
    ],
    ids=["text-dtype", "text-rank", "text-length", "image-dtype", "image-size", "image-class-mismatch",
         "image-batch", "token-beyond-vocabulary", "token-negative", "token-row-not-a-prompt", "image-nan",
         "embedding-inf", "image-overflow"],
)
def test_engine_models_reject_wrong_dtype_shape_and_values(client, model, inputs, message):
    with pytest.raises(InferenceServerException, match=message) as raised:
        client.infer(model, [numpy_tensor(*spec) for spec in inputs])
    assert_client_error(raised.value)
    assert client.is_model_ready(model)


# ------------------------------------------------------------------------------ load, shutdown


def test_eight_concurrent_clients_make_1600_requests_without_error(server, ort_runtime, vocabulary, metadata):
    images = [png_bytes(64, 64, 100 + i) for i in range(8)]
    expected = ort_runtime.predict(local_pixels(images), sigrl.tokenize(vocabulary, metadata.prompt_template))
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(worker: int) -> int:
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        answered = 0
        try:
            for _ in range(200):
                try:
                    scores = grpc.infer("sigrl", entry_inputs([images[worker]], top_k=3)).as_numpy("scores")
                    # a row's scores may differ in the last bits with the batch it was scored in
                    np.testing.assert_allclose(scores[0], expected[worker], rtol=0, atol=1e-5)
                    answered += 1
                except (InferenceServerException, AssertionError) as err:
                    with lock:
                        errors.append(f"client {worker}: {err}")
        finally:
            grpc.close()
        return answered

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answered = sum(pool.map(client_loop, range(8)))
    seconds = time.perf_counter() - start
    print(f"\n8 clients x 200 requests: {answered} answers in {seconds:.1f} s ({answered / seconds:.0f} req/s)")
    assert errors == [] and answered == 1600


def test_tag_command_prints_scores_per_image(server, vocabulary, tmp_path, capsys):
    from sigrl.cli import main
    from sigrl.data.synthetic import SyntheticShapes
    from sigrl.serving.measure import png_bytes

    paths = []
    for i, image in enumerate(SyntheticShapes("test", num_images=2, image_size=64).images):
        paths.append(tmp_path / f"image-{i}.png")
        paths[-1].write_bytes(png_bytes(image))
    assert main(["tag", *map(str, paths), "--url", server.grpc_url, "--top-k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == list(map(str, paths))
    assert all(list(r["scores"]) == vocabulary and len(r["top"]) == 3 for r in rows)  # default vocabulary
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"red": -1.0, "*": 2.0}))  # scores are < 1: only red can pass
    assert main(["tag", str(paths[0]), "--url", server.grpc_url, "--labels", "red,circle,blue",
                 "--thresholds", str(thresholds)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{paths[0]}: red (") and "circle" not in line and "blue" not in line


def test_tag_folder_batches_to_the_server_limit_and_names_each_bad_file(server, vocabulary, tmp_path, capsys):
    """33 images (one more than the entry model's max_batch_size), a corrupt one and an empty one among them."""
    from sigrl.cli import main
    from sigrl.serving.client import SigRLClient

    client = SigRLClient(server.grpc_url)
    assert client.max_batch_size() == 32 and client.vocabulary() == vocabulary
    client.close()
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(33):
        (folder / f"{i:02d}.png").write_bytes(png_bytes(64, 48, 200 + i))
    (folder / "05.png").write_bytes(b"GIF89a but not really")  # corrupt, in the first batch of 32
    (folder / "32.png").write_bytes(b"")  # empty, alone in the second batch
    (folder / "notes.txt").write_text("not an image: skipped")
    code = main(["tag", str(folder), "--url", server.grpc_url, "--labels", "red,circle,blue", "--top-k", "2",
                 "--json"])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 2 and [Path(r["image"]).name for r in rows] == [f"{i:02d}.png" for i in range(33)]
    failed = {Path(r["image"]).name: r["error"] for r in rows if "error" in r}
    assert set(failed) == {"05.png", "32.png"}
    assert f"{folder / '05.png'} is not in a format this server reads" in failed["05.png"]
    assert "image 0" not in failed["05.png"]
    assert failed["32.png"] == f"{folder / '32.png'} is empty"
    assert all(list(r["scores"]) == ["red", "circle", "blue"] and len(r["top"]) == 2 for r in rows if "error" not in r)
    errors = captured.err.splitlines()
    assert len(errors) == 3 and errors[-1] == "sigrl tag: error: 2 of 33 images could not be tagged (see above)"
    assert all(line.startswith("sigrl tag: error: ") for line in errors)


def test_tag_refuses_a_label_list_once_before_sending_any_image(server, tmp_path, capsys):
    """Labels the server would refuse (one prompt after its normalisation) on a folder of 40 images: one error
    line naming --labels, exit 2, and not one inference request sent."""
    from sigrl.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:02d}.png").write_bytes(png_bytes(32, 32, 300 + i))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        before = settled_stats(client, "sigrl")
        for labels, reason in [("Cat,cat", "labels 0 ('Cat') and 1 ('cat') are the same prompt"),
                               ("cat," + "dog " * 45, "label 1 has 45 tokens, over the limit of 40 tokens"),
                               ("ok,<end_of_text>", "label 1 contains a special token")]:
            assert main(["tag", str(folder), "--url", server.grpc_url, "--labels", labels]) == 2
            captured = capsys.readouterr()
            assert captured.out == "" and captured.err.count("\n") == 1, captured.err
            assert captured.err.startswith("sigrl tag: error: --labels: ") and reason in captured.err
        assert settled_stats(client, "sigrl") == before


def test_served_engines_pass_the_parity_check_against_in_process_onnxruntime(server, ort_runtime, vocabulary,
                                                                            metadata):
    from sigrl.deploy.parity import compare_runtimes, parity_inputs
    from sigrl.serving.triton_runtime import TritonRuntime

    vocabularies, images = parity_inputs(vocabulary, metadata.prompt_template, 64, [1, 12, 100], [1, 4])
    rows = compare_runtimes(ort_runtime, TritonRuntime(server.grpc_url), vocabularies, images)
    assert all(r.passed and r.max_abs == 0.0 for r in rows)  # same runtime, same inputs: bit for bit


def test_stop_leaves_no_process_and_no_shared_memory(server):
    """Runs last: stops the module's server (the fixture's own stop is then a no-op)."""
    pgid = server.pid
    server.stop()
    assert_nothing_left(server, pgid)
