"""Triton engine: runs a model's network on a Triton Inference Server; pre/post-processing stay in aiaa-server.

Models are written to a Triton model repository (see `triton_repository`) that Triton must see at the same
path or through a shared volume, and loaded/unloaded through Triton's repository API (Triton runs with
`--model-control-mode=explicit`). gRPC is the default protocol: recent Triton refuses HTTP bodies over 64 MiB,
which whole CT volumes exceed.

Recovery: a request that finds Triton unreachable answers 503 (ServiceUnavailable, Retry-After) and marks the
model unloaded; the next request or readiness check loads it again, so a restarted Triton (which starts with no
models in explicit mode) gets its models back without restarting aiaa-server.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from aiaa_server.engines.triton_repository import TritonModelSpec
from aiaa_server.errors import AIAAError, InvalidModel, ModelError, ServiceUnavailable

log = logging.getLogger(__name__)

TritonProtocol = Literal["grpc", "http"]
RETRY_AFTER_S = 5

_TRITON_TYPES: dict[Any, str] = {
    np.float16: "FP16", np.float32: "FP32", np.float64: "FP64", np.int8: "INT8", np.int16: "INT16",
    np.int32: "INT32", np.int64: "INT64", np.uint8: "UINT8", np.bool_: "BOOL",
}
_MISSING_MODEL_HINTS = ("unknown model", "is not found", "no available versions", "is not ready")


class TritonUnavailable(Exception):
    """Triton cannot be reached (down, restarting, or timing out)."""


class TritonModelMissing(Exception):
    """Triton answers but does not have the model loaded (e.g. it was restarted)."""


def _import_client(protocol: TritonProtocol) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError as exc:
        raise InvalidModel(f"the Triton engine needs tritonclient: pip install 'aiaa-server[triton]' ({exc})") from exc
    return client


@dataclass(frozen=True)
class TritonOptions:
    """How to reach Triton.

    Args:
        url: HOST:PORT, without a scheme (the gRPC port for "grpc", the HTTP port for "http").
        protocol: "grpc" (needed for bodies over 64 MiB) or "http".
        timeout: seconds one call may take.
    """

    url: str
    protocol: TritonProtocol = "grpc"
    timeout: float = 60.0


class TritonClient:
    """A thin, thread-safe wrapper over tritonclient that sorts failures into unavailable / missing / other."""

    def __init__(self, options: TritonOptions) -> None:
        self.options = options
        self._module = _import_client(options.protocol)
        self._local = threading.local()
        self._shared: Any = None

    @property
    def url(self) -> str:
        """Triton's HOST:PORT."""
        return self.options.url

    def _client(self) -> Any:
        if self.options.protocol == "grpc":  # gRPC channels are thread-safe
            if self._shared is None:
                self._shared = self._module.InferenceServerClient(self.url, channel_args=_grpc_channel_args())
            return self._shared
        client = getattr(self._local, "client", None)
        if client is None:  # the HTTP client is gevent based: one per thread
            timeout = self.options.timeout
            client = self._module.InferenceServerClient(self.url, connection_timeout=timeout, network_timeout=timeout)
            self._local.client = client
        return client

    def _timeout_kwargs(self) -> dict[str, float]:
        return {"client_timeout": self.options.timeout} if self.options.protocol == "grpc" else {}

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            try:
                return getattr(self._client(), method)(*args, **kwargs)
            except InferenceServerException as exc:
                raise _classify(exc) from exc
            except (OSError, EOFError) as exc:  # HTTP: refused or reset connections, socket timeouts
                raise TritonUnavailable(f"Triton at {self.url} is unreachable: {exc}") from exc
        except TritonUnavailable:
            self._reset()
            raise

    def _reset(self) -> None:
        """Drop the connection: a gRPC channel that failed backs off for up to minutes before reconnecting.

        The shared gRPC client is only dereferenced, not closed: other threads may still be using it.
        """
        self._shared = None
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken connection may fail in many ways
                log.debug("closing the Triton client failed: %s", exc)

    def live(self) -> bool:
        """Whether Triton says it is live; raises TritonUnavailable when it cannot be reached."""
        return bool(self._call("is_server_live", **self._timeout_kwargs()))

    def model_ready(self, name: str) -> bool:
        """Whether Triton has model `name` loaded and ready (False when it does not know it).

        Raises:
            TritonUnavailable: Triton cannot be reached.
            RuntimeError: any other failure Triton reports.
        """
        try:
            return bool(self._call("is_model_ready", name, **self._timeout_kwargs()))
        except TritonModelMissing:
            return False

    def load(self, name: str) -> None:
        """(Re)load model `name` from the repository; raises TritonUnavailable, TritonModelMissing or RuntimeError."""
        self._call("load_model", name, **self._timeout_kwargs())

    def unload(self, name: str) -> None:
        """Unload model `name`; raises TritonUnavailable, TritonModelMissing or RuntimeError."""
        self._call("unload_model", name, **self._timeout_kwargs())

    def infer(self, spec: TritonModelSpec, batch: np.ndarray) -> np.ndarray:
        """Run the model on `batch` (its declared input dtype, C-contiguous) and return its first output.

        Args:
            spec: the model's name, input and output tensor names, and input dtype.
            batch: (N, C, *spatial), or whatever the declared input dims are when `max_batch_size` is 0.

        Returns:
            A writable array of the output tensor `spec.output_name`.

        Raises:
            TritonUnavailable: Triton cannot be reached or the call timed out.
            TritonModelMissing: Triton does not have the model loaded.
            RuntimeError: any other failure, or no output.
        """
        module = self._module
        tensor = module.InferInput(spec.input_name, list(batch.shape), _TRITON_TYPES[spec.input_dtype])
        if self.options.protocol == "grpc":
            tensor.set_data_from_numpy(batch)
            outputs = [module.InferRequestedOutput(spec.output_name)]
        else:
            tensor.set_data_from_numpy(batch, binary_data=True)
            outputs = [module.InferRequestedOutput(spec.output_name, binary_data=True)]
        kwargs: dict[str, Any] = {"outputs": outputs, **self._timeout_kwargs()}
        result = self._call("infer", spec.name, [tensor], **kwargs)
        output = result.as_numpy(spec.output_name)
        if output is None:
            raise RuntimeError(f"Triton returned no {spec.output_name!r} output")
        # The client hands out read-only views of the response; post-transforms may write in place.
        return np.require(output, requirements="W")


def _classify(exc: Any) -> Exception:
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    if any(code in status for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")):
        return TritonUnavailable(message)
    if "NOT_FOUND" in status or any(hint in message for hint in _MISSING_MODEL_HINTS):
        return TritonModelMissing(message)
    return RuntimeError(message)


class TritonEngine:
    """The Engine protocol over one Triton model: batches are split to respect `max_batch_size`."""

    def __init__(self, name: str, spec: TritonModelSpec, client: TritonClient) -> None:
        self.name = name
        self.device = torch.device("cpu")  # where the outputs land; the network itself runs inside Triton
        self.spec = spec
        self.client = client
        self._loaded = False
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the network in Triton on `batch` (N, C, *spatial), in requests of at most `spec.max_batch_size`
        samples (one request when it is 0).

        Loads the model first if needed, and again (once) when Triton lost it.

        Returns:
            The first output, (N, C_out, *spatial) on the CPU, in the model's output dtype.

        Raises:
            ServiceUnavailable: (503) Triton cannot be reached, also after one retry on a fresh connection.
            ModelError: Triton could not load or run the model.
        """
        array = batch.detach().cpu().numpy().astype(self.spec.input_dtype, copy=False)
        if self.spec.max_batch_size == 0:  # no batching in Triton: the batch dimension is part of the dims
            return torch.from_numpy(self._infer(array))
        chunks = [array[i : i + self.spec.max_batch_size] for i in range(0, len(array), self.spec.max_batch_size)]
        return torch.cat([torch.from_numpy(self._infer(chunk)) for chunk in chunks])

    def _infer(self, array: np.ndarray) -> np.ndarray:
        try:
            return self._infer_once(array)
        except ServiceUnavailable:
            # The failed call dropped its connection; a channel made while Triton was down may still have been
            # backing off, so one immediate retry on a fresh connection tells "down" from "stale channel".
            return self._infer_once(array)

    def _infer_once(self, array: np.ndarray) -> np.ndarray:
        self.ensure_loaded()
        try:
            try:
                return self.client.infer(self.spec, np.ascontiguousarray(array))
            except TritonModelMissing:
                self._loaded = False
                log.warning("model %s is not loaded in Triton (restarted?); loading it again", self.name)
                self.ensure_loaded()
                return self.client.infer(self.spec, np.ascontiguousarray(array))
        except TritonUnavailable as exc:
            self._loaded = False
            raise _unavailable(self.client, exc) from exc
        except TritonModelMissing as exc:
            self._loaded = False
            raise ModelError(f"Triton lost model {self.name!r} while running it: {exc}") from exc
        except RuntimeError as exc:
            raise ModelError(f"Triton failed to run model {self.name!r}: {exc}") from exc

    def ensure_loaded(self) -> None:
        """Load the model into Triton unless this engine already did since Triton was last seen down.

        Raises:
            ServiceUnavailable: (503) Triton cannot be reached.
            ModelError: Triton refused to load the model.
        """
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            try:
                self.client.load(self.name)
            except TritonUnavailable as exc:
                raise _unavailable(self.client, exc) from exc
            except (TritonModelMissing, RuntimeError) as exc:
                raise ModelError(f"Triton could not load model {self.name!r}: {exc}") from exc
            self._loaded = True
            log.info("model %s loaded into Triton at %s", self.name, self.client.url)

    def readiness(self) -> str:
        """`ready`, or why not; loads the model when Triton is up without it (the recovery path for probes)."""
        try:
            if self.client.model_ready(self.name):
                self._loaded = True
                return "ready"
            self._loaded = False
            self.ensure_loaded()
            return "ready"
        except TritonUnavailable as exc:
            self._loaded = False
            return f"unavailable: Triton at {self.client.url} is unreachable ({exc})"
        except ServiceUnavailable as exc:
            return f"unavailable: {exc.message}"
        except AIAAError as exc:
            return f"failed: {exc.message}"
        except RuntimeError as exc:
            return f"failed: Triton answered {exc}"

    def unload(self) -> None:
        """Best effort: the model may already be gone with its Triton."""
        self._loaded = False
        try:
            self.client.unload(self.name)
        except (TritonUnavailable, TritonModelMissing, RuntimeError) as exc:
            log.warning("could not unload model %s from Triton: %s", self.name, exc)


def _grpc_channel_args() -> list[tuple[str, int]]:
    """tritonclient's defaults, plus a channel-local subchannel pool and a short reconnect backoff.

    gRPC shares subchannels between channels to the same address: without a local pool, the "fresh" client
    made after a failure reuses the subchannel that is still backing off (up to minutes) from while Triton
    was down, and keeps answering "connection refused" after Triton is back."""
    from tritonclient.grpc import KeepAliveOptions
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def _unavailable(client: TritonClient, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Triton Inference Server at {client.url} is unavailable: {exc}", retry_after=RETRY_AFTER_S
    )
