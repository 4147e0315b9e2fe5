"""``nlpkit serve RUN``: a checkpoint behind HTTP, with concurrent requests batched on one model.

Why the pieces are the way they are:

- One asyncio queue per task and one worker per queue: a worker takes the first waiting input, then
  collects more until it has ``max_batch_size`` or ``max_wait_ms`` has passed, and runs the model on
  them all at once. A request's inputs go into the queue one by one, so a request with many inputs and
  many requests with one input batch the same way.
- The model runs in ONE inference thread (``run_in_executor`` on a single-thread pool): the event loop
  keeps answering (health checks, limits, errors) while the model works, and the model is never called
  from two threads at once.
- The request and response bodies are those of ``nlpkit predict --json``: an input is a string or a
  record (an object with the task's fields); the answer is ``{"input": ..., "prediction": ...}``, or a
  list of those for a list of inputs. The HF Inference API / Text Embeddings Inference body
  ``{"inputs": ..., "parameters": {...}}`` is read too (an object with an ``inputs`` key, which no task
  has among its input fields) and answered in the same shape; ``parameters`` holds what ``nlpkit predict``
  takes per call (``num_beams`` for a task that generates text), and unknown fields or parameters are 422.
- Limits (body size, inputs per request, characters per text) are checked before anything is queued,
  and every refusal is a 413 or 422 whose message names the field, so a bad client never reaches the
  model and the server keeps answering.
- SIGTERM drains: ``/readyz`` turns 503, new requests get 503, requests already in flight finish, then
  uvicorn stops (exit status 0).

FastAPI and uvicorn are the ``serve`` extra: ``pip install 'nlpkit[serve]'``.
"""

import asyncio
import hmac
import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .._version import __version__
from ..sdk.errors import ConfigError, NlpkitError

log = logging.getLogger("nlpkit.serve")
access_log = logging.getLogger("nlpkit.serve.access")

#: paths that answer without the API key and while draining (health checks, docs)
#: features per forward pass inside one batch, as ``nlpkit predict`` (its --batch-size default), so a
#: batch of inputs is computed exactly as the CLI computes them
FEATURE_BATCH = 64
OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")


def require_serve_extra() -> None:
    """FastAPI and uvicorn are optional: say which extra to install instead of an ImportError."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"nlpkit serve needs FastAPI and uvicorn ({exc.name} is missing): "
                          "pip install 'nlpkit[serve]'") from None


@dataclass(frozen=True)
class Limits:
    """What one request may hold; breaking a limit is answered 413 (size, count) or 422 (text length)."""

    max_body_bytes: int = 1_000_000
    max_items: int = 64
    max_text_chars: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_items", "max_text_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve limit {name} must be >= 1, got {getattr(self, name)}")


class RequestError(Exception):
    """A client error: HTTP status, the field at fault (``body``, ``body[2].context``, ``task``) and why."""

    def __init__(self, status: int, field_name: str, message: str, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.extra = status, field_name, message, extra or {}

    def body(self) -> dict[str, Any]:
        return {"detail": f"{self.field}: {self.message}", "field": self.field, **self.extra}


# ---- batching ---------------------------------------------------------------------------------------
@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    #: per-request prediction options (``num_beams``) as sorted (name, value) pairs; () is the checkpoint's own
    options: tuple = ()
    batch_size: int = 0


class TaskBatcher:
    """The queue and worker of one task: inputs from any number of requests, one model call per batch."""

    def __init__(self, pipe: Any, task: str, max_batch_size: int, max_wait_ms: float, executor: ThreadPoolExecutor):
        self.pipe, self.task = pipe, task
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.executor = executor
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches = 0
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.task}")

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass

    async def submit(self, items: Sequence[Any], options: dict[str, Any] | None = None) -> list[tuple[Any, int]]:
        """(prediction, size of the batch it ran in) for each input, in order. ``options`` (``num_beams``) are
        set on the task for these inputs only: inputs with other options share the queue but not a model call."""
        loop = asyncio.get_running_loop()
        opts = tuple(sorted((options or {}).items()))
        pending = [_Pending(item, loop.create_future(), opts) for item in items]
        for p in pending:
            self.queue.put_nowait(p)
        results = await asyncio.gather(*(p.future for p in pending))
        return [(r, p.batch_size) for r, p in zip(results, pending)]

    async def _collect(self) -> list[_Pending]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [p for p in batch if not p.future.done()]  # a client that went away cancels its future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self.batches += 1
            try:
                outcomes = await loop.run_in_executor(self.executor, self._predict_groups,
                                                      [(p.item, p.options) for p in batch])
            except Exception as exc:  # noqa: BLE001 - e.g. the executor is shutting down: fail these, keep going
                outcomes = [(False, exc, len(batch))] * len(batch)
            for p, (ok, value, size) in zip(batch, outcomes):
                p.batch_size = size
                if p.future.done():
                    continue
                if ok:
                    p.future.set_result(value)
                else:
                    p.future.set_exception(value)

    def _predict_groups(self, batch: list[tuple[Any, tuple]]) -> list[tuple[bool, Any, int]]:
        """Runs in the inference thread: one model call per set of options in the batch (usually one), as
        (ok, prediction or error, size of the model call) per input, in order."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, opts) in enumerate(batch):
            groups.setdefault(opts, []).append(i)
        outcomes: list[Any] = [None] * len(batch)
        for opts, where in groups.items():
            results = self._predict([batch[i][0] for i in where], dict(opts))
            for i, (ok, value) in zip(where, results):
                outcomes[i] = (ok, value, len(where))
        return outcomes

    def _predict(self, items: list[Any], options: dict[str, Any] | None = None) -> list[tuple[bool, Any]]:
        """Runs in the inference thread. If the batch fails, each input is retried alone so that one bad
        input fails only its own request."""
        options = options or {}
        try:
            preds = self.pipe.predict(items, task=self.task, batch_size=FEATURE_BATCH, **options)
            return [(True, p) for p in preds]
        except Exception:  # noqa: BLE001 - isolated below, per input
            if len(items) == 1:
                return [self._alone(items[0], options)]
            return [self._alone(item, options) for item in items]

    def _alone(self, item: Any, options: dict[str, Any] | None = None) -> tuple[bool, Any]:
        try:
            return True, self.pipe.predict([item], task=self.task, batch_size=1, **(options or {}))[0]
        except Exception as exc:  # noqa: BLE001 - becomes this request's error answer
            return False, exc


# ---- request checks ---------------------------------------------------------------------------------
#: the top-level fields of the HF Inference API / Text Embeddings Inference request body
HF_FIELDS = ("inputs", "parameters")


@dataclass
class PredictRequest:
    """A request body, read: the inputs, whether it was one input (one answer) or a list, where the inputs
    sit in the body (``body``, or ``body.inputs`` in the HF format, for error messages) and the options."""

    items: list[Any]
    single: bool
    where: str = "body"
    options: dict[str, Any] = field(default_factory=dict)

    def at(self, i: int) -> str:
        return self.where if self.single else f"{self.where}[{i}]"


def read_request(data: Any, task: Any) -> PredictRequest:
    """The documented body (what ``nlpkit predict --json`` reads: a string, a record or a list of them), or
    the HF body ``{"inputs": ..., "parameters": {...}}``. An object is the HF body when it has an ``inputs``
    key that is not one of the task's record fields (``Task.input_fields``; no built-in task has one)."""
    fields = tuple(getattr(task, "input_fields", ()))
    if isinstance(data, dict) and "inputs" in data and "inputs" not in fields:
        unknown = [k for k in data if k not in HF_FIELDS]
        if unknown:
            raise RequestError(422, "body", f"unknown field{'s' if len(unknown) > 1 else ''} "
                                            f"{', '.join(map(repr, unknown))}: a body with \"inputs\" is the HF "
                                            "request format, whose fields are inputs and parameters",
                               {"unknown_fields": unknown})
        items, single = as_items(data["inputs"], "body.inputs")
        return PredictRequest(items, single, "body.inputs", read_parameters(data.get("parameters"), task))
    if isinstance(data, dict) and "parameters" in data and "parameters" not in fields:
        raise RequestError(422, "body", "a body with \"parameters\" is the HF request format and needs "
                                        "\"inputs\": {\"inputs\": ..., \"parameters\": {...}}")
    items, single = as_items(data)
    return PredictRequest(items, single)


def read_parameters(params: Any, task: Any) -> dict[str, Any]:
    """The HF body's ``parameters``: the options ``nlpkit predict`` takes per call, checked as the CLI checks
    them (``num_beams``: a whole number >= 1, for a task that generates text)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(422, "body.parameters", f"expected an object, not {_json_type(params)}")
    known = ("num_beams",) if getattr(task, "generative", False) else ()
    unknown = [k for k in params if k not in known]
    if unknown:
        takes = (f"it takes {', '.join(known)}" if known else
                 f"task {task.name!r} ({task.type_name}) takes none (num_beams is for tasks that generate text)")
        raise RequestError(422, "body.parameters", f"unknown parameter{'s' if len(unknown) > 1 else ''} "
                                                   f"{', '.join(map(repr, unknown))}: {takes}",
                           {"unknown_parameters": unknown})
    beams = params.get("num_beams")
    if beams is not None and (isinstance(beams, bool) or not isinstance(beams, int) or beams < 1):
        raise RequestError(422, "body.parameters.num_beams", f"must be a whole number >= 1, not {beams!r}")
    return {"num_beams": beams} if beams is not None else {}


def as_items(data: Any, where: str = "body") -> tuple[list[Any], bool]:
    """(inputs, single): a string or an object is one input, a list is several."""
    if isinstance(data, (str, dict)):
        return [data], True
    if isinstance(data, list):
        for i, item in enumerate(data):
            if not isinstance(item, (str, dict)):
                raise RequestError(422, f"{where}[{i}]", f"an input is a string or an object, not {_json_type(item)}")
        if not data:
            raise RequestError(422, where, "the list of inputs is empty")
        return data, False
    raise RequestError(422, where, f"expected a string, an object or a list of them, not {_json_type(data)}")


def check_lengths(items: Sequence[Any], single: bool, limit: int, where: str = "body") -> None:
    """Every string anywhere in an input (text, fields, list elements) is at most ``limit`` characters."""
    for i, item in enumerate(items):
        where_item = where if single else f"{where}[{i}]"
        try:
            found = list(_strings(item, where_item))
        except RecursionError:
            raise RequestError(422, where_item, "nested too deeply") from None
        for where, text in found:
            if len(text) > limit:
                raise RequestError(422, where, f"{len(text)} characters, more than the limit of {limit} "
                                               "(--max-text-chars)")


def _strings(value: Any, where: str):
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _strings(inner, f"{where}.{key}")
    elif isinstance(value, list):
        for k, inner in enumerate(value):
            yield from _strings(inner, f"{where}[{k}]")


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", type(None): "null", list: "a list",
            dict: "an object", str: "a string"}.get(type(value), type(value).__name__)


async def read_body(request: Any, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is larger than ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body", f"{int(declared)} bytes, more than the limit of {limit} (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body", f"more than the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise RequestError(422, "body", "empty; send JSON: a string, an object or a list of them")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(422, "body", f"not valid JSON ({exc})") from None
    except RecursionError:
        raise RequestError(422, "body", "JSON nested too deeply") from None


# ---- the app ----------------------------------------------------------------------------------------
@dataclass
class ServerState:
    """What the routes, the middleware and the signal handler share."""

    run_dir: str
    pipe: Any = None
    card: dict[str, Any] | None = None
    batchers: dict[str, TaskBatcher] = field(default_factory=dict)
    load_error: str | None = None
    draining: bool = False
    inflight: int = 0

    @property
    def ready(self) -> bool:
        return self.pipe is not None and not self.draining


def create_app(run_dir: str | Path, *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
               api_key: str | None = None, limits: Limits | None = None) -> Any:
    """The FastAPI app for one checkpoint. The model loads in the background once the app starts, so
    ``/healthz`` answers at once and ``/readyz`` says 503 until predictions can be made."""
    require_serve_extra()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size must be >= 1, got {max_batch_size}")
    if max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms must be >= 0, got {max_wait_ms}")
    from ..engine import checkpoint

    checkpoint.resolve(run_dir)  # a wrong path fails now, not in the background
    limits = limits or Limits()
    state = ServerState(str(run_dir))
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nlpkit-inference")
    key = api_key.encode() if api_key else None

    async def load_model() -> None:
        loop = asyncio.get_running_loop()
        try:
            pipe, card = await loop.run_in_executor(executor, _load, state.run_dir)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log
            state.load_error = f"{type(exc).__name__}: {exc}"
            log.error(f"cannot load {state.run_dir}: {state.load_error}")
            return
        for name in pipe.task_names:
            batcher = TaskBatcher(pipe, name, max_batch_size, max_wait_ms, executor)
            batcher.start()
            state.batchers[name] = batcher
        state.card, state.pipe = card, pipe
        log.info(f"ready: {state.run_dir} ({', '.join(pipe.task_names)}), max batch {max_batch_size}, "
                 f"max wait {max_wait_ms:g} ms")

    @asynccontextmanager
    async def lifespan(app: Any):
        loader = asyncio.get_running_loop().create_task(load_model())
        yield
        loader.cancel()
        for batcher in state.batchers.values():
            await batcher.stop()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="nlpkit", description=f"Predictions from the nlpkit checkpoint {run_dir}",
                  version=__version__, lifespan=lifespan)
    app.state.nlpkit = state
    app.state.limits = limits
    _add_guard(app, state, key)
    _add_routes(app, state, limits)
    return app


def _add_guard(app: Any, state: ServerState, key: bytes | None) -> None:
    """Errors as JSON, and what every request goes through: draining, authentication, the in-flight count and
    the access log."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status,
                            headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Draining, authentication, the in-flight count and the access log, for every request."""
        start = time.perf_counter()
        path = request.url.path
        open_path = path in OPEN_PATHS
        if state.draining and not open_path:
            response = JSONResponse({"detail": "the server is shutting down"}, status_code=503,
                                    headers={"Connection": "close"})
        elif key is not None and not open_path and not _authorized(request, key):
            response = JSONResponse({"detail": "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)",
                                     "field": "authorization"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        else:
            state.inflight += 1
            try:
                response = await call_next(request)
            finally:
                state.inflight -= 1
        ms = 1000 * (time.perf_counter() - start)
        items = getattr(request.state, "items", None)
        batch = getattr(request.state, "batch_sizes", None)
        access_log.info(f'{request.client.host if request.client else "-"} "{request.method} {path}" '
                        f'{response.status_code} {ms:.1f}ms'
                        + (f" items={items}" if items is not None else "")
                        + (f" batch={max(batch)}" if batch else ""))
        return response


def _add_routes(app: Any, state: ServerState, limits: Limits) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.get("/healthz", summary="the process is up")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", summary="the model is loaded and requests are taken (503 otherwise)")
    async def readyz():
        if state.ready:
            return {"status": "ready", "tasks": state.pipe.task_names}
        why = "shutting down" if state.draining else (f"failed to load: {state.load_error}" if state.load_error
                                                       else "loading the model")
        return JSONResponse({"status": "not ready", "detail": why}, status_code=503)

    @app.get("/v1/tasks", summary="the tasks of the checkpoint, their labels and the model card")
    async def tasks():
        _require_ready(state)
        return {"tasks": [_task_info(t) for t in state.pipe.tasks], "model_card": state.card}

    @app.post("/v1/{task}/predict", summary="predictions for one input or a list of inputs",
              openapi_extra=_PREDICT_OPENAPI)
    async def predict(task: str, request: Request):
        _require_ready(state)
        if task not in state.batchers:
            known = state.pipe.task_names
            raise RequestError(422, "task", f"no task {task!r} in this checkpoint; known tasks: {', '.join(known)}",
                               {"known_tasks": known})
        data = parse_json(await read_body(request, limits.max_body_bytes))
        t = state.pipe.task(task)
        body = read_request(data, t)
        items, single = body.items, body.single
        if len(items) > limits.max_items:
            raise RequestError(413, body.where, f"{len(items)} inputs, more than the limit of {limits.max_items} "
                                                "per request (--max-items)")
        check_lengths(items, single, limits.max_text_chars, body.where)
        for i, item in enumerate(items):
            _check_input(t, item, body.at(i))
        request.state.items = len(items)
        try:
            results = await state.batchers[task].submit(items, body.options)
        except NlpkitError as exc:
            raise RequestError(422, body.where, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the model failed on a valid-looking input
            log.exception(f"{task}: prediction failed")
            return JSONResponse({"detail": f"prediction failed: {type(exc).__name__}: {exc}"}, status_code=500)
        request.state.batch_sizes = [size for _, size in results]
        answers = [{"input": item, "prediction": pred} for item, (pred, _) in zip(items, results)]
        return JSONResponse(answers[0] if single else answers)


_PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "One input or a list: a string (plain text), or an object with the task's fields "
                       "(qa: question, context; reading-comprehension: article, question, options; a "
                       "sentence pair: text, pair). The shapes `nlpkit predict --json` reads. Or the HF "
                       "Inference API body `{\"inputs\": ..., \"parameters\": {...}}` (inputs: one input or a "
                       "list, as above; parameters: num_beams for tasks that generate text), answered the same way.",
        "content": {"application/json": {
            "schema": {"anyOf": [{"type": "string"}, {"type": "object"},
                                 {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "object"}]}}]},
            "examples": {"text": {"value": "Angela Merkel visited Paris ."},
                         "several": {"value": ["Angela Merkel visited Paris .", "It rained in Rome ."]},
                         "record": {"value": {"question": "Who visited Paris?",
                                              "context": "Angela Merkel visited Paris."}},
                         "hf": {"value": {"inputs": ["Angela Merkel visited Paris .", "It rained in Rome ."]}},
                         "hf-generation": {"value": {"inputs": "A man is walking his dog .",
                                                     "parameters": {"num_beams": 4}}}},
        }},
    },
    "responses": {"200": {"description": "`{\"input\": ..., \"prediction\": ...}`, or a list of those for a "
                                         "list of inputs (the lines of `nlpkit predict --json`)"},
                  "413": {"description": "body or number of inputs over the limit"},
                  "422": {"description": "bad JSON, a wrong type, an unknown task, an unknown field or "
                                         "parameter of the HF body, or a text over the limit; "
                                         "`field` names what is wrong"}},
}


def _load(run_dir: str) -> tuple[Any, dict[str, Any]]:
    from .export.card import model_card
    from .predict import load

    pipe = load(run_dir)
    return pipe, model_card(pipe)


def _authorized(request: Any, key: bytes) -> bool:
    """Constant-time comparison, so the answer time does not tell how much of a guess was right."""
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), key)


def _require_ready(state: ServerState) -> None:
    if state.pipe is None:
        raise RequestError(503, "server", "the model is still loading" if not state.load_error
                           else f"the model failed to load: {state.load_error}")


def _check_input(task: Any, item: Any, where: str) -> None:
    """The task's own reading of the input, so a malformed one is refused before it joins a batch."""
    try:
        task.parse_input(item)
    except NlpkitError as exc:
        raise RequestError(422, where, str(exc)) from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise RequestError(422, where, f"not a valid {task.type_name} input ({type(exc).__name__}: {exc})") from None


def _task_info(task: Any) -> dict[str, Any]:
    state = task.state_dict()
    return {"name": task.name, "type": task.type_name, "labels": state.get("labels"),
            "generative": bool(task.generative), "options": task.options_dict()}


# ---- running it -------------------------------------------------------------------------------------
def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch_size: int = 32, max_wait_ms: float = 5.0, limits: Limits | None = None,
          drain_timeout: float = 30.0, keep_alive: float = 30.0, log_level: str = "info") -> None:
    """Run the server until SIGTERM/SIGINT, then drain (``_make_draining_server``)."""
    require_serve_extra()
    import uvicorn

    _setup_logging(log_level)
    app = create_app(run_dir, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, api_key=api_key, limits=limits)
    # keep-alive longer than uvicorn's 5 s: a client that reuses a connection the server is just closing
    # loses that request (a race every HTTP client has), and busy clients of a batching server pause often
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level=log_level,
                            timeout_graceful_shutdown=drain_timeout, timeout_keep_alive=keep_alive)
    server = _make_draining_server()(config, app.state.nlpkit, drain_timeout)
    log.info(f"serving {run_dir} on http://{host}:{port} (docs at /docs){'; API key required' if api_key else ''}")
    server.run()


def _make_draining_server():
    import uvicorn

    class _DrainingServer(uvicorn.Server):
        """uvicorn's server with a drain phase: on the first SIGTERM/SIGINT, new requests get 503 while
        the ones in flight finish, then the usual uvicorn shutdown runs. A second signal stops at once."""

        def __init__(self, config: Any, state: ServerState, drain_timeout: float):
            super().__init__(config)
            self.state, self.drain_timeout = state, drain_timeout

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.state.draining:
                self.force_exit = True
                self.should_exit = True
                return
            self.state.draining = True
            log.info(f"received {signal.Signals(sig).name}: draining {self.state.inflight} request(s) in flight, "
                     "new requests get 503")
            threading.Thread(target=self._exit_when_drained, name="nlpkit-drain", daemon=True).start()

        def _exit_when_drained(self) -> None:
            deadline = time.monotonic() + self.drain_timeout
            while self.state.inflight > 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.state.inflight:
                log.warning(f"drain timeout ({self.drain_timeout:g} s): {self.state.inflight} request(s) cut")
            log.info("drained; shutting down")
            self.should_exit = True

    return _DrainingServer


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("nlpkit.serve", "nlpkit.serve.access"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False
