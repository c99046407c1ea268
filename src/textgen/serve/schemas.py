"""Request and response bodies of the HTTP API, with every bound a request is checked against.

Requests are strict (no strings for numbers, no unknown fields) so a typo or a wrong type is a 400
that names the parameter, never a silent default. Fields OpenAI documents as nullable accept
``null`` for their default. The server's own caps (``--max-tokens``, ``--max-prompt-tokens``)
are checked in the routes, since they are settings of the running server.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from textgen.kinds import KIND_NAMES

HARD_MAX_TOKENS = 1_000_000  # SampleConfig's own limit; the server's --max-tokens is lower
MAX_PROMPTS = 16
MAX_STOPS = 4

NonEmpty = Annotated[str, Field(min_length=1)]
StopText = Annotated[str, Field(min_length=1, max_length=64)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="send a last chunk with the token counts before [DONE]")


class CompletionRequest(_Request):
    """POST /v1/completions: OpenAI's completions fields that apply to a recurrent model, and textgen's own."""

    model: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="a model id from GET /v1/models; may be left out when the server has one model"
    )
    prompt: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        description="text to continue, or a list of texts (each gets n choices)"
    )
    max_tokens: Annotated[int, Field(ge=1, le=HARD_MAX_TOKENS)] | None = Field(
        None, description="tokens to generate per choice (default 16; at most the server's --max-tokens)"
    )
    temperature: Annotated[float, Field(ge=0, le=2)] | None = Field(
        None, description="divide the logits by T (default 1; 0 is greedy)"
    )
    top_p: Annotated[float, Field(gt=0, le=1)] | None = Field(None, description="nucleus mass (default 1: keep all)")
    n: Annotated[int, Field(ge=1, le=16)] | None = Field(None, description="choices per prompt (default 1)")
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOPS)] | None = Field(
        None, description="up to 4 texts that end a choice (left out of its text)"
    )
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = Field(
        None, description="same seed, same settings, same model: same text, alone or batched with others"
    )
    stream: bool | None = Field(None, description="send the text as Server-Sent Events ending with data: [DONE]")
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = Field(
        None, description="return each token's log-probability and this many most likely tokens at its step"
    )
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = Field(
        None, description="subtract this from every token present so far (default 0)"
    )
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = Field(
        None, description="subtract this times a token's count so far (default 0)"
    )
    top_k: int = Field(0, ge=0, le=100_000, description="sample only from the k most likely tokens; 0 keeps all")
    min_p: float = Field(0.0, ge=0, le=1, description="drop tokens less likely than min_p times the most likely")
    typical_p: float = Field(1.0, gt=0, le=1, description="locally typical sampling mass; 1 keeps all")
    repetition_penalty: float = Field(
        1.0, ge=0.01, le=10, description="divide scores of tokens already present by this (CTRL); 1 is off"
    )
    no_repeat_ngram: int = Field(0, ge=0, le=16, description="never repeat an n-gram of this size; 0 is off")
    user: Annotated[str, Field(max_length=256)] | None = Field(None, description="accepted and ignored (OpenAI)")


class TopLogprobs(BaseModel):
    """OpenAI's legacy completions logprobs: per token its text, log-probability, alternatives and offset."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: TopLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = Field(
        description="stop: end-of-text or a stop string; length: max_tokens reached; null until a stream's last chunk"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """A completion, or (streaming) one chunk of it: then ``choices`` holds the new text of some choices."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "textgen"
    kind: Literal[KIND_NAMES] = Field(  # type: ignore[valid-type]
        description="lm: POST /v1/completions; translate: POST /v1/translate"
    )
    tokenizer: str | None = Field(None, description="char, word or bpe")
    vocab_size: int | None = None
    cell: str | None = None
    hidden_size: int | None = None
    layers: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TranslateRequest(_Request):
    """POST /v1/translate, for sequence-to-sequence checkpoints."""

    model: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="a translate model id from GET /v1/models; may be left out when it is the only one"
    )
    input: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=64)] = Field(
        description="a sentence, or a list of sentences"
    )
    beams: int = Field(1, ge=1, le=16, description="beam search width (1 is greedy)")
    length_penalty: float = Field(1.0, ge=0, le=5, description="beam ranking: log p / length ** this")
    max_length: Annotated[int, Field(ge=1, le=HARD_MAX_TOKENS)] | None = Field(
        None, description="tokens per translation (at most the server's --max-tokens)"
    )


class Translation(BaseModel):
    object: Literal["translation"] = "translation"
    model: str
    translations: list[str] = Field(description="one per input sentence, in order")


class Limits(BaseModel):
    max_tokens: int
    max_prompt_tokens: int
    max_body_bytes: int
    max_batch: int


class ModelHealth(BaseModel):
    id: str
    kind: str
    decode_precision: str = Field(description="what the model decodes in: fp32, bf16 or int8 (chosen once, at start)")
    decode_precision_reason: str = Field(description="why that precision (serve --decode-precision, auto by default)")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    active_rows: int = Field(description="sequences being decoded now, all models")
    waiting: int = Field(description="requests waiting for a free row")
    completed: int
    cancelled: int
    limits: Limits
    models: list[ModelHealth]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail
