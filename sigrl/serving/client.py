"""gRPC client of a served SigRL repository (``tritonclient``), without torch: it starts in a fraction of a second.

:class:`SigRLClient` talks to the public ``sigrl`` entry model: encoded image bytes and label names in,
scores and top labels out. :meth:`SigRLClient.tag` tags any number of named images: it checks the label
list once against the served limits and tokenizer (as the server would), then sends the images in requests
of at most the entry model's ``max_batch_size`` and gives every image its own result or its own error, so
one unreadable image does not cost the others their answer. Server problems become plain Python errors:
no server at the address is a :class:`ConnectionError`, a refused request a :class:`RequestRejected` (a
``ValueError``), a timeout a :class:`TimeoutError`, an API the server keeps restricted a
:class:`PermissionError`.

At scale: one client keeps one gRPC channel (reuse it across requests), retries a call the server did not
take (UNAVAILABLE: a replica restarting or draining) with exponential backoff, holds every call to a
deadline, and with a ``dns:///HOST:PORT`` address spreads calls over every address the name resolves to
(gRPC's round-robin policy: a Kubernetes headless Service lists each replica).
The engine models themselves are called by :class:`sigrl.serving.triton_runtime.TritonRuntime`.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from sigrl.errors import UsageError
from sigrl.serving.protocol import (
    ENTRY_MODEL,
    INPUT_IMAGE,
    INPUT_LABELS,
    INPUT_TOP_K,
    LABELS_ERROR,
    OUTPUT_SCORES,
    OUTPUT_TAGS,
    OUTPUT_TOP_LABELS,
    OUTPUT_TOP_SCORES,
    PARAM_DEFAULT_VOCABULARY,
    PARAM_PROMPT_TEMPLATE,
    EntryLimits,
    LabelError,
)

T = TypeVar("T")


class RequestRejected(ValueError):
    """The server refused a request as invalid (Triton's INVALID_ARGUMENT); the message says why."""


def grpc_module() -> Any:
    """``tritonclient.grpc``, or a clear error naming the extra that installs it."""
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as err:
        raise UsageError('tritonclient is missing: pip install "sigrl[serve]" '
                         '(in a checkout: pip install -c constraints.txt -e ".[serve]")') from err
    return grpcclient


def infer_input(name: str, array: np.ndarray, datatype: str) -> Any:
    """A ``tritonclient.grpc.InferInput`` holding ``array``."""
    tensor = grpc_module().InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def translate_errors(url: str, call: Callable[[], T]) -> T:
    """Run a tritonclient call, turning its exceptions into :class:`ConnectionError`, :class:`TimeoutError`,
    :class:`RequestRejected` or :class:`~sigrl.errors.UsageError` with one-line messages naming ``url``."""
    from tritonclient.utils import InferenceServerException

    try:
        return call()
    except InferenceServerException as err:
        status, message = str(err.status() or ""), str(err.message() or err).strip()
        if "restricted" in message:  # Triton answers a restricted API with UNAVAILABLE, which is no outage
            raise PermissionError(f"the Triton server at {url} keeps this API restricted ({message}); it opens only "
                                  "to requests carrying the operator's key") from err
        if "UNAVAILABLE" in status:
            raise ConnectionError(f"no Triton server at {url}: start one with `sigrl serve --repo REPO` "
                                  "or pass the server's gRPC address with --url") from err
        if "DEADLINE_EXCEEDED" in status:
            raise TimeoutError(f"the Triton server at {url} did not answer in time") from err
        if "INVALID_ARGUMENT" in status:
            raise RequestRejected(message) from err
        if "NOT_FOUND" in status or "unknown model" in message or "not found" in message:
            raise UsageError(f"the Triton server at {url} serves no {ENTRY_MODEL!r} model ({message}): "
                             "is it running a repository made by `sigrl triton-repo`?") from err
        raise


@dataclass
class Tagging:
    """What the server said about one image: every label's score, the top labels, best first, and the
    labels at or above the served thresholds, best first (``tags``; None when the server applies none),
    or why this image could not be tagged (``error``; then ``scores`` and ``top`` are empty)."""

    image: str
    scores: dict[str, float] = field(default_factory=dict)
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    tags: list[str] | None = None


def check_labels(labels: Sequence[str]) -> list[str]:
    """Label names as the server accepts them: stripped, none blank, no duplicates (else UsageError)."""
    names = [str(name).strip() for name in labels]
    if not names:
        raise UsageError("the label list is empty")
    seen: dict[str, int] = {}
    for position, name in enumerate(names):
        if not name:
            raise UsageError(f"label {position + 1} of {len(names)} is blank")
        if name in seen:
            raise UsageError(f"label {name!r} is given twice (positions {seen[name] + 1} and {position + 1})")
        seen[name] = position
    return names


def _about(name: str, message: str) -> str:
    """A single-image request's error about ``image 0`` restated about the file ``name``."""
    message = message.strip().splitlines()[0] if message.strip() else "rejected by the server"
    named, count = re.subn(r"\bimage 0\b", name, message, count=1)
    return named if count else f"{name}: {message}"


def channel_args(url: str) -> list[tuple[str, object]]:
    """gRPC channel options: tritonclient's own defaults (message sizes, keepalive), plus round-robin over every
    address a ``dns:///`` target resolves to (a channel otherwise sticks to the one replica it connected to)."""
    grpc = grpc_module()
    keepalive = grpc.KeepAliveOptions()
    args: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", grpc.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpc.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data)]
    if url.startswith("dns:///"):
        args.append(("grpc.lb_policy_name", "round_robin"))
    return args


class SigRLClient:
    """Client of the ``sigrl`` entry model: tag images against a vocabulary chosen per request.

    ``timeout_s`` is every call's deadline; a call answered UNAVAILABLE is retried ``retries`` times, after
    ``backoff_s``, twice that, and so on (with jitter), before :class:`ConnectionError` is raised.
    """

    def __init__(self, url: str = "127.0.0.1:8001", timeout_s: float | None = 60.0, retries: int = 3,
                 backoff_s: float = 0.2) -> None:
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s
        self.client = grpc_module().InferenceServerClient(url, channel_args=channel_args(url))
        self._config: dict[str, Any] | None = None

    def _call(self, call: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return translate_errors(self.url, call)
            except ConnectionError:
                if attempt == self.retries:
                    raise
                time.sleep(self.backoff_s * 2**attempt * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def is_ready(self) -> bool:
        return self._call(lambda: self.client.is_server_ready() and self.client.is_model_ready(ENTRY_MODEL))

    def config(self) -> dict[str, Any]:
        """The entry model's configuration as Triton reports it (read once per client)."""
        if self._config is None:
            self._config = self._call(lambda: self.client.get_model_config(ENTRY_MODEL, as_json=True,
                                                                           client_timeout=self.timeout_s))["config"]
        return self._config

    def _parameter(self, key: str) -> str | None:
        return self.config().get("parameters", {}).get(key, {}).get("string_value")

    def limits(self) -> EntryLimits:
        """What the entry model accepts, as its config publishes it."""
        parameters = {key: value["string_value"] for key, value in self.config().get("parameters", {}).items()}
        return EntryLimits.from_parameters(parameters)

    def max_batch_size(self) -> int:
        """Images per request the entry model accepts (its ``max_batch_size``)."""
        return max(1, int(self.config().get("max_batch_size", 1)))

    def vocabulary(self) -> list[str]:
        """The default vocabulary: the labels the served model was trained on."""
        return json.loads(self._parameter(PARAM_DEFAULT_VOCABULARY) or "[]")

    def check_vocabulary(self, labels: Sequence[str]) -> list[str]:
        """``labels`` as the server will accept them, checked here as the entry model checks them (its limits,
        its prompt template, the same tokenizer): UsageError naming the first problem, before any image is sent."""
        names = check_labels(labels)
        template = self._parameter(PARAM_PROMPT_TEMPLATE)
        if template is None:  # a repository of an older sigrl: the server checks the rest
            return names
        from sigrl.bpe import clip_bpe  # the tokenizer's vocabulary is read only when labels are checked
        from sigrl.serving.vocabulary import check_vocabulary

        try:
            return list(check_vocabulary(names, self.limits(), template, clip_bpe()))
        except LabelError as err:
            reason = str(err).removeprefix(LABELS_ERROR)
            raise UsageError(f"{reason} (the server at {self.url} would refuse it)") from None

    def infer(self, images: list[bytes], labels: list[str] | None = None,
              top_k: int = 5) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
        """Scores N×C and the top-k (label, score) per image, for encoded images in one request.

        ``labels=None`` uses the repository's default vocabulary. At most :meth:`max_batch_size` images.
        """
        scores, tops, _ = self._infer(images, labels, top_k)
        return scores, tops

    def _infer(self, images: list[bytes], labels: list[str] | None,
               top_k: int) -> tuple[np.ndarray, list[list[tuple[str, float]]], list[list[str]] | None]:
        """:meth:`infer`, and the served tags per image (None when the server applies no thresholds)."""
        count = len(images)
        inputs = [infer_input(INPUT_IMAGE, np.array([[b] for b in images], dtype=object), "BYTES"),
                  infer_input(INPUT_TOP_K, np.full((count, 1), top_k, dtype=np.int32), "INT32")]
        if labels is not None:
            encoded = np.array([[name.encode() for name in labels]] * count, dtype=object)
            inputs.append(infer_input(INPUT_LABELS, encoded, "BYTES"))
        result = self._call(lambda: self.client.infer(ENTRY_MODEL, inputs, client_timeout=self.timeout_s))
        top_labels, top_scores = result.as_numpy(OUTPUT_TOP_LABELS), result.as_numpy(OUTPUT_TOP_SCORES)
        tops = [[(name.decode(), float(score)) for name, score in zip(names, scores)]
                for names, scores in zip(top_labels, top_scores)]
        tags = result.as_numpy(OUTPUT_TAGS)  # padded with empty names to the longest row
        if tags is not None:
            tags = [[name.decode() for name in row if name] for row in tags]
        return result.as_numpy(OUTPUT_SCORES), tops, tags

    def tag(self, names: Sequence[str], images: Sequence[bytes | BaseException], labels: Sequence[str] | None = None,
            top_k: int = 5) -> list[Tagging]:
        """One :class:`Tagging` per named image, in order, each with its scores or its own error.

        ``images`` holds encoded bytes, or the exception met reading that file (reported as its error).
        The label list is checked first (:meth:`check_vocabulary`): a refused list fails the whole call before
        any image is sent. Images go in requests of at most :meth:`max_batch_size`; a request the server
        refuses for an image is retried image by image, so only the images at fault get an error.
        """
        vocabulary = self.check_vocabulary(labels) if labels is not None else self.vocabulary()
        send = vocabulary if labels is not None else None
        results: list[Tagging | None] = [
            Tagging(name, error=f"{name}: {data}") if isinstance(data, BaseException) else None
            for name, data in zip(names, images)]

        def answer(indices: list[int]) -> None:
            batch = [images[i] for i in indices]
            try:
                scores, tops, tags = self._infer(batch, send, top_k)  # type: ignore[arg-type]
            except RequestRejected as err:
                if str(err).startswith(LABELS_ERROR):  # the label list, not an image: no point in retrying
                    raise UsageError(f"the server at {self.url} refused the label list: "
                                     f"{str(err).removeprefix(LABELS_ERROR)}") from None
                raise
            for position, (index, row, top) in enumerate(zip(indices, scores, tops)):
                results[index] = Tagging(names[index], {label: float(s) for label, s in zip(vocabulary, row)}, top,
                                         tags=None if tags is None else tags[position])

        pending = [i for i, result in enumerate(results) if result is None]
        step = self.max_batch_size()
        for start in range(0, len(pending), step):
            batch = pending[start:start + step]
            if len(batch) > 1:
                try:
                    answer(batch)
                    continue
                except RequestRejected:
                    pass  # one image at fault fails the request: retry one by one, the others get their answer
            for index in batch:
                try:
                    answer([index])
                except RequestRejected as err:
                    results[index] = Tagging(names[index], error=_about(names[index], str(err)))
        return [result for result in results if result is not None]

    def close(self) -> None:
        self.client.close()
