"""The bodies of the API's requests, validated (pydantic, strict: a string is not a number, a
bool is not an int, NaN is no number) and turned into one ApiError (400, the field named) when
they are wrong: never a 500. Fields OpenAI has and this server does not implement are refused
when set to anything but their neutral value; fields it does not know are ignored, as clients
send their own (`user`, ...). One extension is vLLM's: `ignore_eos`."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from lmforge.config_checks import MIN_TEMPERATURE
from lmforge.serve.errors import ApiError, bad_request
from lmforge.serve.limits import (
    MAX_N,
    MAX_SEED,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TEMPERATURE,
)

Prompt = str | list[int]  # text, or token ids


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _prompts(value: Any) -> list[Prompt]:
    """A completion's `prompt`: a string, a list of strings, a list of token ids or a list of
    lists of token ids, as a list of prompts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(x, str) for x in value):
            return list(value)
        if all(_is_int(x) for x in value):
            return [list(value)]
        if all(isinstance(x, list) and x and all(_is_int(i) for i in x) for x in value):
            return [list(x) for x in value]
    raise ValueError("must be a string, a list of strings, a non-empty list of token ids or a "
                     "list of such lists")


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ValueError("must be a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters")
    return list(stops)


def _content(value: Any) -> str:
    """A message's content: a string, or a list of text parts ({"type": "text", "text": ...}),
    joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        raise ValueError("only text parts ({\"type\": \"text\", \"text\": ...}) are supported")
    raise ValueError("must be a string or a list of text parts")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampled(_Strict):
    """What completions and chat completions share."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: Annotated[list[str], PlainValidator(_stop)] = []
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # vLLM's extension: the end-of-text (and a chat's end-of-turn) token does not end the
    # sequence, which runs to max_tokens (benchmarks want a known number of tokens)
    ignore_eos: bool = False
    # OpenAI's, not implemented here: refused unless neutral (see `unsupported`)
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    tools: Any = None
    functions: Any = None
    response_format: Any = None


class CompletionRequest(_Sampled):
    prompt: Annotated[list[Prompt], PlainValidator(_prompts)]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Any = None
    suffix: Any = None
    best_of: Any = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, PlainValidator(_content)]


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


R = TypeVar("R", CompletionRequest, ChatCompletionRequest)


def _neutral(name: str, value: Any, n: int) -> bool:
    if value is None:
        return True
    if name in ("presence_penalty", "frequency_penalty"):
        return (_is_int(value) or isinstance(value, float)) and value == 0
    if name in ("logit_bias", "tools", "functions"):
        return value in ({}, [])
    if name == "response_format":
        return value == {"type": "text"}
    if name == "echo":
        return value is False
    if name == "best_of":
        return value in (1, n)
    return False  # suffix


_UNSUPPORTED = ("presence_penalty", "frequency_penalty", "logit_bias", "tools", "functions",
                "response_format", "echo", "suffix", "best_of")


def parse(kind: type[R], body: bytes) -> R:
    """The request of `kind` in `body`; an ApiError (400, its `param` the field at fault) when
    it is not one. max_tokens is checked against the server's limit and the model's context
    later (prompts.Encoder.sampling), where the context is known."""
    try:
        request = kind.model_validate_json(body)
    except ValidationError as err:
        raise _bad(err) from None
    n = request.n or 1
    for name in _UNSUPPORTED:
        if name in type(request).model_fields and not _neutral(name, getattr(request, name), n):
            raise bad_request(f"{name} is not supported by this server", param=name)
    if isinstance(request, ChatCompletionRequest) and request.top_logprobs:
        raise bad_request("top_logprobs is not supported: only the sampled tokens' log "
                          "probabilities are given", param="top_logprobs")
    if request.temperature is not None and 0 < request.temperature < MIN_TEMPERATURE:
        raise bad_request(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}",
                          param="temperature")
    prompts = len(request.prompt) if isinstance(request, CompletionRequest) else 1
    if prompts * n > MAX_N:
        raise bad_request(f"{prompts} prompts times n={n} make {prompts * n} sequences; at most "
                          f"{MAX_N} per request", param="n")
    return request


def max_tokens_asked(request: _Sampled) -> tuple[str, int | None]:
    """The field that bounds the new tokens, and its value (None: not given)."""
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        return "max_completion_tokens", request.max_completion_tokens
    return "max_tokens", request.max_tokens


def _bad(err: ValidationError) -> ApiError:
    first = err.errors(include_url=False)[0]
    loc, kind = first["loc"], first["type"]
    if kind == "json_invalid":
        why = (first.get("ctx") or {}).get("error", "")
        return bad_request(f"the body is not valid JSON ({why})" if why else
                           "the body is not valid JSON")
    if not loc:
        return bad_request("the body must be a JSON object")
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    message = first["msg"].removeprefix("Value error, ")
    if kind == "missing":
        message = "is required"
    return bad_request(f"{param}: {message}", param=param)

