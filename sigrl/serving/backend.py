"""Triton python-backend models of a SigRL model repository: the glue between Triton and the request logic.

Each python model folder of the repository (see :mod:`sigrl.serving.repository`) holds a two-line
``model.py`` that imports one class from here as ``TritonPythonModel``, and a settings file
(:data:`~sigrl.serving.protocol.SETTINGS_FILE`) the repository builder wrote:

* :class:`TextGMCModel`, :class:`ImageSVFRModel`: the two engines in ONNX Runtime (CPU), inputs checked
  against the engine specs, refused when not finite or not valid token ids, and outputs checked to be finite
  (the ``python`` runtime of the repository);
* :class:`SigRLModel`: the public entry. Its request logic lives in :mod:`sigrl.serving.entry` (caps, top-k,
  tags), :mod:`sigrl.serving.vocabulary` (label lists, tokens, the vocabulary cache) and
  :mod:`sigrl.serving.images` (decoding with bounded work); it runs the engines in its own ONNX Runtime
  sessions (python runtime) or calls the engine models through BLS (GPU runtimes), one ``image_svfr`` call
  per vocabulary shared by the requests of a batch.

Every client mistake is answered with INVALID_ARGUMENT naming the input; anything else with a short
INTERNAL message, the details (traceback) going to Triton's log only. Nothing here imports torch:
``triton_python_backend_utils`` exists only inside the Triton stub and ``onnxruntime`` is an optional
extra, so both are imported when a model runs.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from sigrl.bpe import EOT_TOKEN_ID, SOT_TOKEN_ID, VOCAB_SIZE, ClipBPE
from sigrl.config import SigRLConfig
from sigrl.deploy.engines import EngineSpec, ImageSVFREngine, TextGMCEngine, engine_specs
from sigrl.serving.entry import (
    EntryRequest,
    check_embeddings,
    group_by_vocabulary,
    parse_request,
    tag_rows,
    top_k,
    unscorable_images,
)
from sigrl.serving.images import ImagePreprocessor
from sigrl.serving.protocol import (
    ENTRY_MODEL,
    INPUT_IMAGE,
    INPUT_LABELS,
    INPUT_TOP_K,
    OUTPUT_SCORES,
    OUTPUT_TAGS,
    OUTPUT_TOP_LABELS,
    OUTPUT_TOP_SCORES,
    PARAM_CACHE_SIZE,
    PARAM_PREPROCESS,
    PARAM_THREADS,
    PARAM_TOKENIZER_CACHE_SIZE,
    SETTING_BPE_VOCAB,
    SETTING_CONFIG,
    SETTING_ENGINE_FILE,
    SETTING_LOCAL_ENGINES,
    SETTING_MAX_CLASSES,
    SETTING_PROMPT_TEMPLATE,
    SETTING_THRESHOLDS,
    SETTING_VOCABULARY,
    SETTINGS_FILE,
    EntryLimits,
    RequestError,
)
from sigrl.serving.vocabulary import Embeddings, PromptTokenizer, Vocabulary, VocabularyCache, check_token_ids
from sigrl.thresholds import Thresholds


class BLSError(RuntimeError):
    """A BLS call to another model of the repository answered with an error."""


def _pb_utils() -> ModuleType:
    """The python backend's utility module (only importable inside the Triton stub)."""
    import triton_python_backend_utils

    return triton_python_backend_utils


def model_parameters(model_config: str) -> dict[str, str]:
    """The ``parameters`` of a model config (the JSON Triton hands to ``initialize``) as {key: string_value}."""
    return {key: value["string_value"] for key, value in json.loads(model_config).get("parameters", {}).items()}


def version_dir(args: Mapping[str, str]) -> Path:
    """The model's version folder (``<repository>/<model>/<version>``) from ``initialize``'s args."""
    return Path(args["model_repository"]) / args["model_version"]


def read_settings(args: Mapping[str, str]) -> dict[str, Any]:
    """The settings file the repository builder wrote into the model's version folder."""
    return json.loads((version_dir(args) / SETTINGS_FILE).read_text(encoding="utf-8"))


def _error_response(message: str, invalid_argument: bool = False) -> Any:
    """A failed response for one request (INVALID_ARG for bad inputs, INTERNAL otherwise)."""
    pb = _pb_utils()
    code = pb.TritonError.INVALID_ARG if invalid_argument else pb.TritonError.INTERNAL
    return pb.InferenceResponse(error=pb.TritonError(message, code))


def _failure(model: str, err: Exception) -> Any:
    """The response for a request that raised ``err``: INVALID_ARG with its message for a client mistake, else
    INTERNAL with a short message (the details go to Triton's log, never to the client)."""
    if isinstance(err, RequestError):
        return _error_response(str(err), invalid_argument=True)
    _pb_utils().Logger.log_error(f"{model}: {''.join(traceback.format_exception(err))}")
    return _error_response(f"{model}: internal error ({type(err).__name__}); details are in the server log")


def _response(outputs: Mapping[str, np.ndarray]) -> Any:
    pb = _pb_utils()
    return pb.InferenceResponse(output_tensors=[pb.Tensor(name, array) for name, array in outputs.items()])


def _input(request: Any, name: str) -> np.ndarray | None:
    """A request's input as numpy, or None when the (optional) input is absent."""
    tensor = _pb_utils().get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _answer_each(model: str, requests: list[Any], answer: Callable[[Any], Mapping[str, np.ndarray]]) -> list[Any]:
    """Responses of ``answer`` per request: one request's failure never fails the others or the model."""
    responses = []
    for request in requests:
        try:
            responses.append(_response(answer(request)))
        except Exception as err:
            responses.append(_failure(model, err))
    return responses


class EngineSession:
    """One exported engine in an ONNX Runtime CPU session, with the checks a served engine applies to its inputs
    and outputs.

    ONNX Runtime's threads stop spinning when a run ends (``session.force_spinning_stop``): in a server,
    Triton, its stubs and the gRPC threads share the cores, and threads spinning between runs take them
    from the others. Results are those of :class:`sigrl.deploy.runtimes.OnnxRuntime` bit for bit (whatever
    precision the graph computes in, its inputs and outputs are float32).
    """

    def __init__(self, path: Path, spec: EngineSpec, threads: int = 0) -> None:
        import onnxruntime as ort  # an optional extra (cpu/gpu), as in sigrl.deploy.runtimes

        self.spec = spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def warm_up(self) -> bool:
        """Run the engine once at its smallest shapes (ONNX Runtime allocates on the first run); False when the
        outputs are not finite (every request would then be refused)."""
        return all(np.isfinite(output).all() for output in self.run(self.spec.warmup_inputs()))

    def check(self, feeds: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """The feeds, or RequestError naming the input whose name, dtype, shape or values are wrong: non-finite
        floats, token ids that are not a tokenized prompt (ids beyond the vocabulary would fail the gather)."""
        engine = self.spec.name
        missing = [name for name, array in feeds.items() if array is None]
        if missing:
            raise RequestError(f"{engine}: the required input {missing[0]!r} is missing")
        present = {name: array for name, array in feeds.items() if array is not None}
        try:
            self.spec.check_inputs(present)
        except ValueError as err:
            raise RequestError(str(err)) from None
        for name, array in present.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise RequestError(f"{engine}: input {name!r} holds NaN or infinite values")
        if TextGMCEngine.TOKEN_IDS in present:
            check_token_ids(present[TextGMCEngine.TOKEN_IDS], VOCAB_SIZE, SOT_TOKEN_ID, EOT_TOKEN_ID)
        return present

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """The engine's ``outputs`` (default: all, in spec order) for ``feeds``, unchecked."""
        return self.session.run(list(outputs or self.spec.output_names), dict(feeds))


def _warm_up(model: str, session: EngineSession) -> None:
    """Warm ``session`` up, warning in Triton's log when the engine gives non-finite outputs even then."""
    if not session.warm_up():
        _pb_utils().Logger.log_warn(f"{model}: {session.spec.name} gives non-finite outputs at warm-up: requests it "
                                    "cannot score will be refused")


def _engine_spec(settings: Mapping[str, Any], engine: str) -> EngineSpec:
    """The spec of ``engine`` for the model configuration and class range a settings file records."""
    specs = engine_specs(SigRLConfig(**settings[SETTING_CONFIG]), settings[SETTING_MAX_CLASSES])
    return next(spec for spec in specs if spec.name == engine)


class _EngineModel:
    """An exported engine served by the python backend: :class:`EngineSession` from its version folder."""

    engine: ClassVar[str]

    def initialize(self, args: dict[str, str]) -> None:
        settings = read_settings(args)
        threads = int(model_parameters(args["model_config"]).get(PARAM_THREADS, 0))
        self.engine_session = EngineSession(version_dir(args) / settings[SETTING_ENGINE_FILE],
                                            _engine_spec(settings, self.engine), threads)
        _warm_up(self.engine, self.engine_session)

    def run(self, request: Any) -> dict[str, np.ndarray]:
        spec = self.engine_session.spec
        feeds = self.engine_session.check({name: _input(request, name) for name in spec.input_names})
        outputs = dict(zip(spec.output_names, self.engine_session.run(feeds)))
        for name, values in outputs.items():  # inputs the engine cannot compute with (e.g. overflowing values)
            if not np.isfinite(values).all():
                rows = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)).tolist()
                raise RequestError(f"{spec.name}: these inputs give non-finite {name!r} (rows {rows[:8]}): "
                                   "the engine cannot compute with them")
        return outputs

    def execute(self, requests: list[Any]) -> list[Any]:
        return _answer_each(self.engine, requests, self.run)


class TextGMCModel(_EngineModel):
    """``text_gmc``: token ids C×L int32 → label_emb, graph_emb C×D float32."""

    engine = TextGMCEngine.name


class ImageSVFRModel(_EngineModel):
    """``image_svfr``: images B×3×H×W and a vocabulary's (label_emb, graph_emb) → scores B×C."""

    engine = ImageSVFREngine.name


async def _bls(model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
    """Run ``model`` on ``inputs`` through BLS and return copies of the requested outputs.

    The copies own their memory: the outputs outlive the BLS response (the cache keeps embeddings). An
    engine model's INVALID_ARG (e.g. non-finite outputs) stays a client error.
    """
    pb = _pb_utils()
    request = pb.InferenceRequest(model_name=model, requested_output_names=list(outputs),
                                  inputs=[pb.Tensor(name, array) for name, array in inputs.items()])
    response = await request.async_exec()
    if response.has_error():
        error = response.error()
        if error.code() == pb.TritonError.INVALID_ARG:
            raise RequestError(error.message())
        raise BLSError(f"{model}: {error.message()}")
    return [np.array(pb.get_output_tensor_by_name(response, name).as_numpy(), copy=True) for name in outputs]


class PushedCounters:
    """Triton Prometheus counters (``/metrics``) that follow totals kept in the stub, through :meth:`push`.

    Each change of a custom metric is a message from the stub to the server, so totals are pushed once
    per ``execute``, not per event. Without metrics (``--allow-metrics=false``) nothing is pushed.
    """

    def __init__(self, name: str, description: str, label: str, values: Sequence[str]) -> None:
        pb = _pb_utils()
        self._pushed = dict.fromkeys(values, 0)
        try:
            self._family = pb.MetricFamily(name=name, description=description, kind=pb.MetricFamily.COUNTER)
            self._metrics = {value: self._family.Metric(labels={label: value}) for value in values}
        except Exception as err:  # metrics turned off in this server
            pb.Logger.log_warn(f"{name}: not exported ({err})")
            self._metrics = {}

    def push(self, totals: Mapping[str, int]) -> None:
        """Add to each exported counter what its total (a count since start) gained since the last push."""
        for value, metric in self._metrics.items():
            if totals[value] != self._pushed[value]:
                metric.increment(totals[value] - self._pushed[value])
                self._pushed[value] = totals[value]

    def close(self) -> None:
        """Release the metrics before their family (the order the python backend requires)."""
        self._metrics.clear()
        self.__dict__.pop("_family", None)


class SigRLModel:
    """``sigrl``: images (N×1 bytes) + optional labels (N×C bytes) and top_k (N×1) → scores and top labels.

    The engines run in this stub's own sessions when the settings name their files (``local_engines``, the
    python runtime: no hop to another stub per request), else through BLS (GPU runtimes, where Triton runs
    the engines). ``execute`` is a coroutine so that the BLS calls of one batch's vocabulary groups overlap.
    """

    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args["model_config"])
        settings = read_settings(args)
        self.limits = EntryLimits.from_parameters(params)
        self.cache = VocabularyCache(int(params[PARAM_CACHE_SIZE]))
        self.lookups = PushedCounters("sigrl_vocabulary_lookups_total", "Vocabularies looked up in the entry "
                                      "model's cache, by result", "result", ("hit", "miss"))
        engines = (TextGMCEngine.name, ImageSVFREngine.name)
        self.runs = PushedCounters("sigrl_engine_runs_total", "Engine runs of the entry model (in its own sessions "
                                   "or through BLS), by engine", "engine", engines)
        self.engine_runs = dict.fromkeys(engines, 0)
        self.default_vocabulary: Vocabulary = tuple(settings[SETTING_VOCABULARY])
        repository = Path(args["model_repository"]).parent
        threads = int(params.get(PARAM_THREADS, 0))
        self.local_engines = {name: EngineSession(repository / path, _engine_spec(settings, name),
                                                  threads)
                              for name, path in settings.get(SETTING_LOCAL_ENGINES, {}).items()}
        for session in self.local_engines.values():
            _warm_up(ENTRY_MODEL, session)
        thresholds = settings.get(SETTING_THRESHOLDS)
        self.thresholds = None if thresholds is None else Thresholds.from_json(thresholds, SETTINGS_FILE)
        bpe = ClipBPE(version_dir(args) / settings[SETTING_BPE_VOCAB], int(params[PARAM_TOKENIZER_CACHE_SIZE]))
        self.tokenizer = PromptTokenizer(settings[SETTING_PROMPT_TEMPLATE], self.limits.max_label_tokens, bpe)
        self.preprocessor = ImagePreprocessor(json.loads(params[PARAM_PREPROCESS]), self.limits)

    async def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        parsed: dict[int, EntryRequest] = {}
        for index, request in enumerate(requests):
            try:
                parsed[index] = parse_request(_input(request, INPUT_IMAGE), _input(request, INPUT_LABELS),
                                              _input(request, INPUT_TOP_K), self.limits, self.default_vocabulary)
            except Exception as err:
                responses[index] = _failure(ENTRY_MODEL, err)
        groups = group_by_vocabulary({index: entry.labels for index, entry in parsed.items()})
        answers = await asyncio.gather(*(self._answer_group(labels, [parsed[i] for i in members])
                                         for labels, members in groups.items()))
        for members, answer in zip(groups.values(), answers):
            for index, response in zip(members, answer):
                responses[index] = response
        self.lookups.push({"hit": self.cache.hits, "miss": self.cache.misses})
        self.runs.push(self.engine_runs)
        return responses

    async def _answer_group(self, labels: Vocabulary, entries: list[EntryRequest]) -> list[Any]:
        """Responses for requests sharing one vocabulary: their images scored in one ``image_svfr`` call."""
        try:
            embeddings = await self._embeddings(labels)
        except Exception as err:
            return [_failure(ENTRY_MODEL, err)] * len(entries)
        responses: list[Any] = [None] * len(entries)
        pixels = {}
        for position, entry in enumerate(entries):
            try:
                pixels[position] = self.preprocessor.pixels(entry.images)
            except Exception as err:
                responses[position] = _failure(ENTRY_MODEL, err)
        if not pixels:
            return responses
        try:
            (scores,) = await self._engine(ImageSVFREngine.name, {
                ImageSVFREngine.IMAGES: np.concatenate(list(pixels.values())),
                ImageSVFREngine.LABEL_EMB: embeddings[0], ImageSVFREngine.GRAPH_EMB: embeddings[1]},
                [ImageSVFREngine.SCORES])
        except Exception as err:  # a failed engine call fails this group's requests, never the model
            for position in pixels:
                responses[position] = _failure(ENTRY_MODEL, err)
            return responses
        counts = [len(entries[p].images) for p in pixels]
        for position, rows in zip(pixels, np.split(scores, np.cumsum(counts)[:-1])):
            responses[position] = self._scored(rows, labels, entries[position].top_k)
        return responses

    def _scored(self, rows: np.ndarray, labels: Vocabulary, k: int) -> Any:
        """The response for one request's scores: INVALID_ARG when the engine could not score an image."""
        unscored = unscorable_images(rows)
        if unscored:
            return _failure(ENTRY_MODEL, RequestError(f"image {unscored[0]} cannot be scored: the image engine gives "
                                                      "non-finite scores for it"))
        names, values = top_k(rows, labels, k)
        outputs = {OUTPUT_SCORES: rows, OUTPUT_TOP_LABELS: names, OUTPUT_TOP_SCORES: values}
        if self.thresholds is not None:
            outputs[OUTPUT_TAGS] = tag_rows(rows, labels, self.thresholds)
        return _response(outputs)

    async def _embeddings(self, labels: Vocabulary) -> Embeddings:
        """(label_emb, graph_emb) of ``labels``: from the cache, else from ``text_gmc`` (then cached if finite)."""
        cached = self.cache.get(labels)
        if cached is not None:
            return cached
        token_ids = self.tokenizer.token_ids(labels)  # as OnnxRuntime.encode_labels, after the checks
        label_emb, graph_emb = await self._engine(TextGMCEngine.name, {TextGMCEngine.TOKEN_IDS: token_ids},
                                                  [TextGMCEngine.LABEL_EMB, TextGMCEngine.GRAPH_EMB])
        check_embeddings(label_emb, graph_emb)
        self.cache.put(labels, (label_emb, graph_emb))
        return label_emb, graph_emb

    async def _engine(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """The ``outputs`` of engine ``model`` for ``inputs``: in this stub's session if it has one, else by BLS."""
        self.engine_runs[model] += 1
        session = self.local_engines.get(model)
        if session is None:
            return await _bls(model, inputs, outputs)
        return session.run(inputs, outputs)

    def finalize(self) -> None:
        """Log how well the vocabulary cache served (Triton's log, at unload)."""
        _pb_utils().Logger.log_info(f"sigrl vocabulary cache: {self.cache.hits} hits, {self.cache.misses} misses, "
                                    f"{len(self.cache)}/{self.cache.capacity} vocabularies kept")
        self.lookups.close()
        self.runs.close()
