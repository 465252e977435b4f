"""What one request may ask of the server, and how long it may take."""

from __future__ import annotations

from dataclasses import dataclass

MAX_N = 16  # choices (times prompts) per request
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1  # OpenAI's seeds are int64; seed + i (for n > 1) stays within torch's 64 bits
MAX_TEMPERATURE = 2.0  # as OpenAI


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024  # per choice; also the default of a chat completion
    max_body_bytes: int = 1 << 20
    request_timeout: float = 300.0  # seconds from the request's arrival to its last token

    def __post_init__(self) -> None:
        if min(self.max_prompt_tokens, self.max_tokens, self.max_body_bytes) < 1:
            raise ValueError("limits must be at least 1")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")
