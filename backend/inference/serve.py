"""An OpenAI-compatible HTTP API for a tuned model: `ftstudio serve` and the Chat tab's Serve button.

    GET  /v1/models              the one model this server answers with
    POST /v1/chat/completions    a reply as JSON, or as server-sent events with "stream": true

The model stays in the chat worker subprocess (`ChatClient`), which renders the conversation with the
model's own chat template; this process only speaks HTTP. The worker holds one model and writes one
reply at a time, so requests are answered in arrival order. Every error is OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, with a sentence in `message`.

The bind rule is the studio's, made strict: loopback needs nothing, any other address needs an API key
(`--api-key` or FTSTUDIO_API_KEY), which every request must send as `Authorization: Bearer KEY`.
"""
# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at definition.
import hmac
import json
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

from backend.core.errors import UserError
from backend.core.security import is_loopback
from backend.inference.chat import ChatError, normalize_settings

API_KEY_ENV = "FTSTUDIO_API_KEY"
DEFAULT_PORT = 8000
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_WAIT_FOR_TURN_S = 600.0


class ReplySource(Protocol):
    """What the server generates with: ChatClient, or a stand-in in tests."""
    last_done: Optional[dict[str, Any]]

    def stream(self, messages: list[dict[str, str]], settings: Optional[dict[str, Any]] = None,
               use_adapter: bool = True) -> Iterator[str]: ...


class ApiError(Exception):
    """An HTTP error with OpenAI's body; `message` is the sentence the caller reads."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---- the bind rule --------------------------------------------------------------------------

def api_key_from(value: Optional[str]) -> Optional[str]:
    """The key from --api-key, else from the environment; None when neither is set."""
    key = (value or os.environ.get(API_KEY_ENV) or "").strip()
    return key or None


def check_bind(host: str, api_key: Optional[str]) -> None:
    """Refuse an address other machines can reach unless requests must carry a key."""
    if not is_loopback(host) and not api_key:
        raise UserError(
            f"Serving on {host} lets other machines reach the model, so it needs an API key: add "
            f"--api-key KEY (or set {API_KEY_ENV}); clients then send 'Authorization: Bearer KEY'. "
            "Without a key, serve on 127.0.0.1.")


def check_port_free(host: str, port: int) -> None:
    """A port already taken is a sentence before any model is loaded."""
    if not 0 < int(port) < 65536:
        raise UserError(f"The port must be between 1 and 65535; got {port}.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError as e:
            raise UserError(f"Cannot listen on {host}:{port} ({e.strerror or e}). Another program may use the "
                            "port: pick another with --port.") from None


def served_model_id(model: Optional[str], adapter: Optional[str]) -> str:
    """The name /v1/models lists: the run's folder name for a run or adapter, else the model's name."""
    if adapter:
        p = Path(adapter).expanduser().resolve()
        if p.name == "adapter" or p.parent.name == "checkpoints":
            return p.parent.name if p.name == "adapter" else f"{p.parent.parent.name}-{p.name}"
        return p.name
    ref = str(model or "")
    p = Path(ref).expanduser()
    return p.resolve().name if p.is_dir() else ref


def usage_examples(url: str, model_id: str, needs_key: bool) -> dict[str, str]:
    """A curl line and an openai-client snippet for this server (printed by the CLI, shown in the Chat tab)."""
    auth = ' -H "Authorization: Bearer $FTSTUDIO_API_KEY"' if needs_key else ""
    body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "Hello!"}]})
    curl = f"curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"
    key = 'os.environ["FTSTUDIO_API_KEY"]' if needs_key else '"unused"'
    python = (f"import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=\"{url}/v1\", api_key={key})\n"
              f"reply = client.chat.completions.create(model=\"{model_id}\",\n"
              "    messages=[{\"role\": \"user\", \"content\": \"Hello!\"}])\n"
              "print(reply.choices[0].message.content)")
    return {"curl": curl, "python": python}


# ---- requests ---------------------------------------------------------------------------------

def _text_of(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"messages[{i}].content holds a part that is not text; this model reads text "
                                    "only, so send the content as a string or as {\"type\": \"text\"} parts.",
                               param=f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string; got {type(content).__name__}.",
                   param=f"messages[{i}].content")


def parse_messages(raw: Any) -> list[dict[str, str]]:
    """The conversation as the chat template takes it; "developer" is read as "system"."""
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects.",
                       param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'.", param=f"messages[{i}]")
        role = m.get("role")
        if role not in _ROLES:
            raise ApiError(400, f"messages[{i}].role is {role!r}; this server takes system, user and assistant "
                                "messages (no tool or function calls).", param=f"messages[{i}].role")
        out.append({"role": _ROLES[role], "content": _text_of(m.get("content"), i)})
    return out


def _number(body: dict[str, Any], name: str, cast=float) -> Any:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError(400, f"'{name}' must be a number; got {v!r}.", param=name)
    return cast(v)


def parse_stops(raw: Any) -> list[str]:
    if raw is None:
        return []
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "'stop' must be a string or a list of up to 4 strings.", param="stop")
    return [s for s in stops if s]


def parse_request(body: Any, model_id: str) -> dict[str, Any]:
    """A chat-completions body as (messages, generation settings, stream flags, stops), or an ApiError."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object with 'model' and 'messages'.")
    model = body.get("model")
    if model is not None and model != model_id:
        raise ApiError(404, f"The model {model!r} is not served here; this server answers as {model_id!r} "
                            "(GET /v1/models lists it).", param="model", code="model_not_found")
    if body.get("n") not in (None, 1):
        raise ApiError(400, "This server writes one answer per request; leave 'n' out or set it to 1.", param="n")
    if body.get("tools") or body.get("functions"):
        raise ApiError(400, "This server does not call tools or functions; send the request without 'tools'.",
                       param="tools")
    max_tokens = _number(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int)
    settings = {"max_new_tokens": max_tokens, "temperature": _number(body, "temperature"),
                "top_p": _number(body, "top_p"), "top_k": _number(body, "top_k", int),
                "repetition_penalty": _number(body, "repetition_penalty"), "seed": _number(body, "seed", int)}
    try:
        settings = normalize_settings({k: v for k, v in settings.items() if v is not None})
    except ChatError as e:
        raise ApiError(400, str(e)) from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    return {"messages": parse_messages(body.get("messages")), "settings": settings, "stream": stream,
            "stops": parse_stops(body.get("stop")),
            "include_usage": bool(isinstance(options, dict) and options.get("include_usage"))}


class StopScanner:
    """Cuts the reply at the first stop string. Text that could be the start of a stop string is held back
    until the next chunk shows it is not, so a stop string is never streamed out in part."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        buf = self.held + text
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit, self.held = True, ""
            return buf[:min(found)]
        hold = 0
        for k in range(min(len(buf), max(map(len, self.stops)) - 1), 0, -1):
            if any(s.startswith(buf[-k:]) for s in self.stops):
                hold = k
                break
        self.held = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


# ---- the app ----------------------------------------------------------------------------------

class _Replies:
    """Runs one reply at a time through the worker and tells how it ended."""

    def __init__(self, source: ReplySource) -> None:
        self.source = source
        self.turn = threading.Lock()  # released from whichever thread finishes the stream

    def run(self, req: dict[str, Any], outcome: dict[str, Any]) -> Iterator[str]:
        """Yield the reply's text; at the end, `outcome` holds "finish" ("stop" or "length") and "usage"."""
        if not self.turn.acquire(timeout=_WAIT_FOR_TURN_S):
            raise ApiError(503, "The model is still answering earlier requests; try again in a moment.",
                           kind="server_error", code="busy")
        gen = None
        try:
            self.source.last_done = None
            scanner = StopScanner(req["stops"])
            gen = self.source.stream(req["messages"], req["settings"])
            for chunk in gen:
                text = scanner.feed(chunk)
                if text:
                    yield text
                if scanner.hit:
                    break
            if not scanner.hit:
                tail = scanner.flush()
                if tail:
                    yield tail
            done = self.source.last_done or {}
            tokens = int(done.get("tokens") or 0)
            outcome["finish"] = ("length" if not scanner.hit and tokens >= req["settings"]["max_new_tokens"]
                                 else "stop")
            prompt = int(done.get("prompt_tokens") or 0)
            outcome["usage"] = {"prompt_tokens": prompt, "completion_tokens": tokens,
                                "total_tokens": prompt + tokens}
        finally:
            if gen is not None:
                gen.close()  # a reply cut at a stop string, or a caller gone: the worker stops generating
            self.turn.release()


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def build_app(source: ReplySource, model_id: str, api_key: Optional[str] = None):
    """The FastAPI application; `source` generates the replies (ChatClient in `ftstudio serve`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="Fine-Tune Studio API", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    replies = _Replies(source)

    def error_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        if e.status_code == 404:
            msg = (f"There is no {request.url.path} here; this server answers GET /v1/models and "
                   "POST /v1/chat/completions.")
        elif e.status_code == 405:
            msg = f"{request.method} is not accepted on {request.url.path}."
        else:
            msg = str(e.detail)
        return error_response(ApiError(e.status_code, msg, code="not_found" if e.status_code == 404 else None))

    def authorize(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "This server needs its API key: send it as 'Authorization: Bearer KEY', the key "
                                f"given to ftstudio serve (--api-key or {API_KEY_ENV}).", code="invalid_api_key")

    @app.get("/v1/models")
    def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "fine-tune-studio"}]}

    @app.get("/v1/models/{name:path}")
    def model(name: str, request: Request):
        authorize(request)
        if name != model_id:
            raise ApiError(404, f"The model {name!r} is not served here; this server answers as {model_id!r}.",
                           param="model", code="model_not_found")
        return {"id": model_id, "object": "model", "created": created, "owned_by": "fine-tune-studio"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorize(request)
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "The request body is not valid JSON.") from None
        req = parse_request(body, model_id)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if req["stream"]:
            return StreamingResponse(_stream(req, cid, now), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        from starlette.concurrency import run_in_threadpool
        outcome: dict[str, Any] = {}
        text = await run_in_threadpool(_complete, req, outcome)
        return {"id": cid, "object": "chat.completion", "created": now, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": outcome["finish"], "logprobs": None}],
                "usage": outcome["usage"]}

    def _complete(req: dict[str, Any], outcome: dict[str, Any]) -> str:
        try:
            return "".join(replies.run(req, outcome))
        except ChatError as e:
            raise ApiError(500, str(e), kind="server_error") from None
        except UserError as e:
            raise ApiError(400, str(e)) from None

    def _stream(req: dict[str, Any], cid: str, now: int) -> Iterator[str]:
        def chunk(delta: dict[str, Any], finish: Optional[str] = None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": now, "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        outcome: dict[str, Any] = {}
        yield _sse(chunk({"role": "assistant", "content": ""}))
        try:
            for text in replies.run(req, outcome):
                yield _sse(chunk({"content": text}))
        except (ApiError, UserError) as e:
            err = e if isinstance(e, ApiError) else ApiError(500, str(e), kind="server_error")
            yield _sse(err.body())
            yield "data: [DONE]\n\n"
            return
        yield _sse(chunk({}, outcome["finish"]))
        if req["include_usage"]:
            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": now, "model": model_id,
                        "choices": [], "usage": outcome["usage"]})
        yield "data: [DONE]\n\n"

    return app


def serve(model: Optional[str], adapter: Optional[str], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          api_key: Optional[str] = None, on_ready=None) -> None:
    """Load the model in a chat worker and answer HTTP until interrupted (Ctrl+C or SIGTERM)."""
    import uvicorn

    from backend.inference.chat import ChatClient

    api_key = api_key_from(api_key)
    check_bind(host, api_key)
    check_port_free(host, port)
    client = ChatClient()
    try:
        info = client.load(model, adapter)
        model_id = served_model_id(model, adapter)
        app = build_app(client, model_id, api_key)
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=int(port), log_level="warning",
                                               access_log=False))
        if on_ready:
            threading.Thread(target=_announce_when_up, args=(server, on_ready, url, model_id, info, api_key),
                             daemon=True).start()
        _run_until_signal(server)
    finally:
        client.shutdown()  # the worker is in its own session: it must be ended, not left to a signal


class _Stopped(Exception):
    """SIGTERM arrived (the Chat tab's Stop, or `kill`)."""


def _run_until_signal(server) -> None:
    """uvicorn stops gracefully on SIGINT/SIGTERM and then raises the signal again with the handler it found;
    with ours in place that ends here, so the caller's cleanup runs instead of the process dying at once."""
    def stop(signum, frame):
        raise _Stopped()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        server.run()
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _announce_when_up(server, on_ready, url: str, model_id: str, info: dict[str, Any], api_key) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    on_ready({"url": url, "model": model_id, "base": info.get("model"), "adapter": info.get("adapter"),
              "device": info.get("device"), "api_key_required": bool(api_key),
              "examples": usage_examples(url, model_id, bool(api_key))})


__all__ = ["ApiError", "StopScanner", "api_key_from", "build_app", "check_bind",
           "check_port_free", "parse_request", "serve", "served_model_id", "usage_examples"]
