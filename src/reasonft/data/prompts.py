"""The prompt format — what the student sees before a response and what ends one — and
tokenisation with prompt masking.

One `PromptFormat`, built from the data config (`PromptFormat.from_config(cfg.data)`: keys
`prompt_suffix`, `chat_template`, `system_prompt`), is handed to every stage that builds
prompts (generation, scoring, training, evaluation, the toy student's pre-training), so they
cannot disagree.

- `suffix`: appended to the problem text (the official OXA instruction, METHODS §1d).
- `chat_template`: wrap the prompt in the tokenizer's chat template (when it has one).
- `system_prompt`: None = no system message (the official choice); "default" = whatever the
  template does when given none; any other string = that system message. Some templates insert
  a system message of their own when none is given (the stock Qwen2.5-Math template adds
  "Please reason step by step, and put your final answer within \\boxed{}."; Qwen2.5-Instruct
  adds "You are Qwen, created by Alibaba Cloud..."). None removes it: the prompt is rendered
  with a placeholder system message and that message's whole block, as the template renders it
  alone, is cut off the front, so the text starts at the user turn — the official training
  text (LLaMA-Factory's `qwen_no_sys`) and the official evaluation prompt alike.
- `response_end`, the response terminator: "template" (default) = with a chat template, the
  template's own end of an assistant turn (read off the template by rendering an assistant
  message: `<|im_end|>\\n` for Qwen, as the official training data ends), without one the
  tokenizer's EOS token; "eos" = always the EOS token (the toy world keeps it: its student
  was calibrated on EOS-terminated traces).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

OXA_SUFFIX = (
    "\nLet's reason step by step. Enclose the reasoning process within <think>...</think>, then "
    "summarize it and present the final answer within \\boxed{} — for example: "
    "<think>reasoning process here</think> \\boxed{answer here}."
)
IGNORE_INDEX = -100
TEMPLATE_DEFAULT = "default"
RESPONSE_ENDS = ("template", "eos")
_SYSTEM_PLACEHOLDER = "\u2063reasonft-system-placeholder\u2063"
_RESPONSE_PLACEHOLDER = "\u2063reasonft-response-placeholder\u2063"
_USER_PLACEHOLDER = "\u2063reasonft-user-placeholder\u2063"


@dataclass(frozen=True)
class PromptFormat:
    """How a problem becomes the prompt text, and what ends a training response (module doc)."""

    suffix: str = ""
    chat_template: bool = True
    system_prompt: str | None = None
    response_end: str = "template"

    def __post_init__(self) -> None:
        if not isinstance(self.suffix, str):
            raise TypeError(f"data.prompt_suffix={self.suffix!r}: must be a string")
        if not isinstance(self.chat_template, bool):
            raise TypeError(f"data.chat_template={self.chat_template!r}: must be true or false")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise TypeError(
                f"data.system_prompt={self.system_prompt!r}: null (no system message), "
                "'default' (the chat template's own) or the system message text"
            )
        if self.response_end not in RESPONSE_ENDS:
            raise ValueError(
                f"data.response_end={self.response_end!r}: choose one of {list(RESPONSE_ENDS)}"
            )
        if self.system_prompt is not None and not self.chat_template:
            raise ValueError(
                f"data.system_prompt={self.system_prompt!r} needs data.chat_template=true "
                "(a system message exists only inside a chat template); set it to null"
            )

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> PromptFormat:
        """From the data config: `prompt_suffix` (default ""), `chat_template` (default true),
        `system_prompt` (default null), `response_end` (default "template")."""
        return cls(
            suffix=str(data.get("prompt_suffix", "") or ""),
            chat_template=bool(data.get("chat_template", True)),
            system_prompt=data.get("system_prompt", None),
            response_end=str(data.get("response_end", "template")),
        )

    @classmethod
    def coerce(cls, value: PromptFormat | Mapping[str, Any] | None) -> PromptFormat:
        """A PromptFormat from itself, a mapping of its fields (Hydra hands dataclasses over as
        DictConfigs), or None (the default format)."""
        if value is None:
            return cls()
        if isinstance(value, PromptFormat):
            return value
        if isinstance(value, Mapping):
            fields = dict(value.items())
            unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(
                    f"prompt_format: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}"
                )
            return cls(**fields)
        raise TypeError(f"prompt_format: expected a PromptFormat or a mapping, got {type(value).__name__}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def uses_template(self, tokenizer: Any) -> bool:
        return self.chat_template and bool(getattr(tokenizer, "chat_template", None))

    # -- the prompt -----------------------------------------------------------------------------

    def prompt_text(self, problem: str, tokenizer: Any) -> str:
        """The text the student sees before its response."""
        content = problem + self.suffix
        if not self.uses_template(tokenizer):
            return content
        user = {"role": "user", "content": content}
        if self.system_prompt == TEMPLATE_DEFAULT:
            return _render(tokenizer, [user], generation_prompt=True)
        if self.system_prompt is not None:
            system = {"role": "system", "content": self.system_prompt}
            return _render(tokenizer, [system, user], generation_prompt=True)
        placeholder = {"role": "system", "content": _SYSTEM_PLACEHOLDER}
        full = _render(tokenizer, [placeholder, user], generation_prompt=True)
        block = _system_block(tokenizer)
        if not full.startswith(block):
            raise ValueError(
                "data.system_prompt=null: the chat template does not render a system message as a "
                "block before the user turn, so it cannot be left out; set data.system_prompt to "
                "'default' or to a system message"
            )
        return full[len(block) :]

    # -- the end of a response --------------------------------------------------------------------

    def response_terminator(self, tokenizer: Any) -> str:
        """What follows a training response: the template's end of turn, else the EOS token."""
        if self.response_end == "template" and self.uses_template(tokenizer):
            end = _template_turn_end(tokenizer)
            if end:
                return end
        if tokenizer.eos_token is None:
            raise ValueError(
                "the tokenizer has no eos_token to end training responses with; set "
                "data.chat_template=true with a chat template, or give the tokenizer an eos_token"
            )
        if self.uses_template(tokenizer) and tokenizer.eos_token in _assistant_header(tokenizer):
            raise ValueError(
                f"data.response_end=eos: this tokenizer's EOS {tokenizer.eos_token!r} opens a "
                "chat turn in its template, so it cannot end a response; set "
                "data.response_end=template (the template's end of turn: "
                f"{_template_turn_end(tokenizer)!r})"
            )
        return tokenizer.eos_token

    def terminator_ids(self, tokenizer: Any) -> list[int]:
        return tokenizer(self.response_terminator(tokenizer), add_special_tokens=False)["input_ids"]

    # -- token ids ------------------------------------------------------------------------------

    def encode(
        self, problem: str, response: str, tokenizer: Any, terminate: bool = True
    ) -> dict[str, Any]:
        """`{input_ids, labels, prompt_len}` of prompt + response (+ terminator), prompt masked."""
        terminator = self.terminator_ids(tokenizer) if terminate else []
        return encode_example(self.prompt_text(problem, tokenizer), response, tokenizer, terminator)


def encode_example(
    prompt_text: str,
    response: str,
    tokenizer: Any,
    terminator_ids: list[int] | None = None,
) -> dict[str, Any]:
    """Token ids of prompt + response + terminator, and labels with every prompt token -100.

    Prompt, response and terminator are tokenised separately so that the boundaries are exact
    and the response ids are the same ones scoring uses (the terminator starts with a special
    token, which no merge crosses, so this equals tokenising the response and terminator together).
    """
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    response_ids = response_ids + list(terminator_ids or [])
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        "prompt_len": len(prompt_ids),
    }


def build_prompt(problem: str, tokenizer: Any, prompt_format: PromptFormat | None = None) -> str:
    """`prompt_format.prompt_text(problem, tokenizer)` (the default format when None)."""
    return PromptFormat.coerce(prompt_format).prompt_text(problem, tokenizer)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _system_block(tokenizer: Any) -> str:
    """The placeholder system message as the template renders it alone."""
    key = ("system", tokenizer.chat_template)
    if key not in _TEMPLATE_CACHE:
        block = _render(tokenizer, [{"role": "system", "content": _SYSTEM_PLACEHOLDER}], False)
        if _SYSTEM_PLACEHOLDER not in block:
            raise ValueError(
                "data.system_prompt=null: the chat template drops a lone system message, so its "
                "block cannot be found; set data.system_prompt to 'default' or to a system message"
            )
        _TEMPLATE_CACHE[key] = block
    return _TEMPLATE_CACHE[key]


def _assistant_header(tokenizer: Any) -> str:
    """What the generation prompt adds after the last user turn (`<|im_start|>assistant\\n`)."""
    user = [{"role": "user", "content": _USER_PLACEHOLDER}]
    with_header = _render(tokenizer, user, generation_prompt=True)
    return with_header[len(_render(tokenizer, user, generation_prompt=False)) :]


def _template_turn_end(tokenizer: Any) -> str:
    """What the template writes after an assistant message's content ("" when nothing)."""
    key = ("turn_end", tokenizer.chat_template)
    if key not in _TEMPLATE_CACHE:
        user = {"role": "user", "content": _USER_PLACEHOLDER}
        prompt = _render(tokenizer, [user], generation_prompt=True)
        full = _render(
            tokenizer, [user, {"role": "assistant", "content": _RESPONSE_PLACEHOLDER}], False
        )
        if not (full.startswith(prompt) and full[len(prompt) :].startswith(_RESPONSE_PLACEHOLDER)):
            raise ValueError(
                "data.chat_template=true: the chat template does not render an assistant message "
                "as the generation prompt followed by its content, so the end of a response "
                "cannot be read off it; set data.chat_template=false (responses then end with EOS)"
            )
        _TEMPLATE_CACHE[key] = full[len(prompt) + len(_RESPONSE_PLACEHOLDER) :]
    return _TEMPLATE_CACHE[key]


_TEMPLATE_CACHE: dict[tuple[str, str], str] = {}
