"""Requests as token ids: a completion's prompts as the tokenizer encodes them (or the ids
given), a chat's messages through the run's chat template (tasks/chat.py: the tokenizer's
own, or lmforge's, as sft trained with), and the sampling settings of each sequence."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError
from lmforge.serve.engine import SamplingParams
from lmforge.serve.errors import bad_request
from lmforge.serve.limits import Limits
from lmforge.serve.schemas import ChatCompletionRequest, CompletionRequest, Prompt, max_tokens_asked
from lmforge.tasks.chat import ChatTemplate, Message

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for a completion; a chat's is the server's limit


@dataclass(frozen=True)
class Encoder:
    """What turns a request into ids: the run's tokenizer, its chat template, the model's
    context (0 for a recurrent model, which has no window; the engine crops a longer prompt
    to what leaves room for max_tokens) and the server's limits."""

    tokenizer: Tokenizer
    template: ChatTemplate
    context: int
    limits: Limits

    @property
    def max_new_tokens(self) -> int:
        """The most new tokens a request may ask for: the server's limit, and never past the
        model's context."""
        if not self.context:
            return self.limits.max_tokens
        return min(self.limits.max_tokens, self.context)

    def completion(self, request: CompletionRequest) -> list[list[int]]:
        return [self._fitted(self._ids(p), "prompt") for p in request.prompt]

    def chat(self, request: ChatCompletionRequest) -> list[int]:
        messages = tuple(Message("system" if m.role == "developer" else m.role, m.content)
                         for m in request.messages)
        try:
            ids = self.template.prompt(messages)
        except LmforgeError as err:  # the template refused the conversation
            raise bad_request(str(err), param="messages") from None
        return self._fitted(ids, "messages")

    def _ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            try:
                return self.tokenizer.encode_prompt(prompt)
            except LmforgeError as err:  # a character a char tokenizer does not have
                raise bad_request(f"prompt: {err}", param="prompt") from None
        vocab = self.tokenizer.vocab_size
        if not all(0 <= i < vocab for i in prompt):
            raise bad_request(f"prompt: token ids must be between 0 and {vocab - 1}",
                              param="prompt")
        return prompt

    def _fitted(self, ids: list[int], param: str) -> list[int]:
        most = self.limits.max_prompt_tokens
        if len(ids) > most:
            raise bad_request(f"{param}: the prompt is {len(ids):,} tokens; at most {most:,} on "
                              "this server", param=param)
        return ids

    def sampling(self, request: CompletionRequest | ChatCompletionRequest,
                 prompt: list[int]) -> list[SamplingParams]:
        """The settings of each of the n sequences of `prompt`: seeds seed, seed + 1, ... when
        a seed is given, so that n choices differ and the same request gives the same
        choices. A chat without max_tokens may fill the model's context (at most the
        server's limit)."""
        field, asked = max_tokens_asked(request)
        most = self.max_new_tokens
        if asked is not None and asked > most:
            why = "the model's context" if most < self.limits.max_tokens else "this server"
            raise bad_request(f"{field} must be at most {most:,} ({why}), got {asked:,}",
                              param=field)
        if isinstance(request, CompletionRequest):
            default = min(COMPLETION_MAX_TOKENS, most)
        elif self.context:  # what the context leaves after the prompt (as OpenAI), but at
            # least half of it: the engine crops an older part of a long conversation
            default = min(most, max(self.context - len(prompt), self.context // 2, 1))
        else:
            default = most
        logprobs = request.logprobs is not None and request.logprobs is not False
        return [SamplingParams(
            max_tokens=asked if asked is not None else default,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_k=request.top_k or 0, top_p=1.0 if request.top_p is None else request.top_p,
            seed=None if request.seed is None else request.seed + i, logprobs=logprobs,
            ignore_eos=request.ignore_eos)
            for i in range(request.n or 1)]
