"""The HTTP API over an `Engine` (FastAPI; needs the `serve` extra).

Endpoints:
  POST /predict            {"prompt": str, "max_tokens"?, "temperature"?, "top_k"?, "top_p"?, "seed"?}
                           -> {"generated_text", "finish_reason", "usage", "speculative", "timing"}
  POST /v1/completions     an OpenAI-style subset: prompt (one string), max_tokens, temperature,
                           top_p, top_k, n, seed, stream, model (ignored). Unknown fields are refused.
  GET  /health, GET /stats

finish_reason is "stop" (EOS), "length" (max_tokens) or "error" (generation stopped early because
the model's logits were not finite, e.g. a broken checkpoint; the text before that point is returned).

Every bad request gets a 4xx JSON body {"error": {"message", "type", "param", "code"}} before
anything is queued, so it cannot affect other requests; a failure inside a batch gives 500
to that batch's requests only; a full queue 503; a request not served in time 504.

Streaming (`"stream": true`) is honest about what it is: generation is one on-device call,
so nothing exists before it finishes. The server waits for the result, then sends it as
server-sent events, one `data: {...}` chunk per token of each choice, a chunk with each
choice's finish_reason, a final chunk with usage/speculative/timing, and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jaxspec.serving.batching import Completion
from jaxspec.serving.engine import Engine, GenerationError, Overloaded
from jaxspec.serving.validation import MAX_SEED, RequestError

MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_TOKENS = 16  # OpenAI's default


class _Strict(BaseModel):
    # strict: "5" is not an int and true is not a number; no NaN or inf.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class PredictRequest(_Strict):
    prompt: str = Field(min_length=1)
    # None: min(16, the server's cap); the upper bound is the cap, checked by the engine.
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


class CompletionRequest(PredictRequest):
    model: str | None = None
    n: int = Field(1, ge=1)
    stream: bool = False


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


class BodyLimit:
    """ASGI middleware: reads the whole body first and answers 413 past `max_bytes`."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error(413, f"request body larger than {self.max_bytes} bytes.", "body")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await error(400, "invalid Content-Length header.", "body")(scope, receive, send)
            if int(declared) > self.max_bytes:
                return await too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await too_large(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(
    engine: Engine,
    tokenizer,
    *,
    model_name: str = "jaxspec",
    max_body_bytes: int = MAX_BODY_BYTES,
    request_timeout_s: float = 300.0,
    manage_engine: bool = True,
) -> FastAPI:
    """The FastAPI app serving `engine`.

    Args:
      engine: the batching engine (warm it up before serving).
      tokenizer: a Hugging Face tokenizer of the target (encode/decode).
      model_name: reported in responses.
      max_body_bytes: larger request bodies get 413.
      request_timeout_s: a request not answered within this gets 504.
      manage_engine: start the engine when the app starts and close it when it stops.
    """

    async def lifespan(_app):
        if manage_engine:
            engine.start()
        yield
        if manage_engine:
            engine.close()

    app = FastAPI(title="jaxspec speculative sampling server", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(Exception)
    async def _unexpected(_request, err):  # the server keeps serving; the client gets JSON
        return error(500, f"internal error: {type(err).__name__}", None, "server_error")

    async def parse(request: Request, schema: type[BaseModel]) -> BaseModel | JSONResponse:
        body = await request.body()
        try:
            return schema.model_validate_json(body)
        except ValidationError as err:
            first = err.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or "body"
            if first["type"] == "json_invalid":
                return error(400, f"the body is not valid JSON: {first['msg']}", "body")
            if first["type"] == "extra_forbidden":
                return error(400, f"unknown field {param!r}.", param)
            return error(400, f"{param}: {first['msg']}", param)

    async def generate(req: PredictRequest, n: int) -> tuple[list[int], Completion] | JSONResponse:
        prompt_ids = tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
        try:
            future = engine.submit(
                prompt_ids,
                max_tokens=min(DEFAULT_MAX_TOKENS, engine.max_tokens) if req.max_tokens is None else req.max_tokens,
                n=n,
                temperature=req.temperature,
                top_k=req.top_k,
                top_p=req.top_p,
                seed=req.seed,
            )
        except RequestError as err:
            return error(400, str(err), err.param)
        except Overloaded as err:
            return error(503, str(err), None, "overloaded")
        try:
            completion = await asyncio.wait_for(asyncio.wrap_future(future), request_timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"not served within {request_timeout_s:g} s.", None, "timeout")
        except GenerationError as err:
            return error(500, str(err), None, "server_error")
        except Overloaded as err:
            return error(503, str(err), None, "overloaded")
        return prompt_ids, completion

    def extras(completion: Completion) -> dict[str, Any]:
        drafted = sum(c.drafted for c in completion.choices)
        accepted = sum(c.accepted for c in completion.choices)
        generated = sum(c.generated for c in completion.choices)
        calls = sum(c.target_calls for c in completion.choices)
        completion_tokens = sum(len(c.token_ids) for c in completion.choices)
        return dict(
            usage=dict(
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=completion.prompt_tokens + completion_tokens,
            ),
            speculative=dict(
                acceptance_rate=accepted / drafted if drafted else 0.0,
                tokens_per_target_call=generated / calls if calls else 0.0,
                drafted=drafted,
                accepted=accepted,
            ),
            timing=dict(
                queue_ms=round(completion.queue_ms, 3),
                generate_ms=round(completion.generate_ms, 3),
                batch_size=completion.batch_size,
                padded_batch_size=completion.padded_batch,
            ),
        )

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/stats")
    async def stats():
        return engine.stats()

    @app.post("/predict")
    async def predict(request: Request):
        req = await parse(request, PredictRequest)
        if isinstance(req, JSONResponse):
            return req
        out = await generate(req, 1)
        if isinstance(out, JSONResponse):
            return out
        _, completion = out
        choice = completion.choices[0]
        return dict(
            generated_text=tokenizer.decode(list(choice.token_ids)),
            finish_reason=choice.finish_reason,
            **extras(completion),
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        if isinstance(req, JSONResponse):
            return req
        out = await generate(req, req.n)
        if isinstance(out, JSONResponse):
            return out
        _, completion = out
        head = dict(id=f"cmpl-{uuid.uuid4().hex}", object="text_completion", created=int(time.time()), model=model_name)
        texts = [tokenizer.decode(list(c.token_ids)) for c in completion.choices]
        if not req.stream:
            choices = [
                dict(text=text, index=i, logprobs=None, finish_reason=c.finish_reason)
                for i, (text, c) in enumerate(zip(texts, completion.choices))
            ]
            return dict(head, choices=choices, **extras(completion))

        def events():
            def chunk(choices, **more) -> str:
                return f"data: {json.dumps(dict(head, choices=choices, **more))}\n\n"

            for i, (text, c) in enumerate(zip(texts, completion.choices)):
                for piece in _pieces(tokenizer, c.token_ids, text):
                    yield chunk([dict(text=piece, index=i, logprobs=None, finish_reason=None)])
                yield chunk([dict(text="", index=i, logprobs=None, finish_reason=c.finish_reason)])
            yield chunk([], **extras(completion))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _pieces(tokenizer, token_ids: tuple[int, ...], text: str):
    """Per-token pieces of `text` whose concatenation is exactly `text`.

    A token that ends inside a multi-byte character (or that decoding would
    change once more tokens follow) joins the next piece.
    """
    sent = 0
    for i in range(1, len(token_ids) + 1):
        prefix = tokenizer.decode(list(token_ids[:i]))
        if len(prefix) > sent and text.startswith(prefix) and not prefix.endswith("\ufffd"):
            yield text[sent : len(prefix)]
            sent = len(prefix)
    if sent < len(text):
        yield text[sent:]
