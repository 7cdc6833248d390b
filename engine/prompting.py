"""How an infill request becomes a prompt (product.md, "How a request flows", step 4).

Models whose tokenizer has fill-in-the-middle tokens (the embedded model) get a native FIM prompt in
suffix-first order, with the context snippets first. While the user types, only the end of the
prefix changes, so the start of the prompt stays byte-identical across keystrokes and the engine
reuses its KV cache:

    <bos>
    <|file_sep|>{snippet.path}\n{snippet.text}\n          (one per snippet, lowest priority first)
    <|file_sep|>{path}\n
    <|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>

The canvas that follows holds the middle, then <eos>, then <pad> up to the canvas length. The
training data of the embedded model (engine/training) uses exactly this layout.

DiffusionGemma has no FIM tokens (diffusiongemma.md 5.3): it gets a hole-filling chat prompt
rendered with the checkpoint's own chat template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.requests import ContextSnippet

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FILE_SEP = "<|file_sep|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP)

HOLE = "<|HOLE|>"
INFILL_SYSTEM_PROMPT = (
    "You are a code completion engine. The user shows a file with one hole marked "
    f"{HOLE}. Reply with exactly the code that belongs in the hole: no explanation, "
    "no code fences, no text that is already before or after the hole."
)


def fim_context_text(snippets: Sequence[ContextSnippet], path: str | None) -> str:
    """The snippet block and file header that precede `<|fim_suffix|>`."""
    parts = [f"{FILE_SEP}{s.path}\n{s.text.rstrip()}\n" for s in snippets]
    parts.append(f"{FILE_SEP}{path or 'untitled'}\n")
    return "".join(parts)


def fim_prompt(
    prefix: str, suffix: str, snippets: Sequence[ContextSnippet] = (), path: str | None = None
) -> str:
    """The native FIM prompt text, without <bos> (the tokenizer's post-processor adds it)."""
    return f"{fim_context_text(snippets, path)}{FIM_SUFFIX}{suffix}{FIM_PREFIX}{prefix}{FIM_MIDDLE}"


def chat_infill_messages(
    prefix: str,
    suffix: str,
    snippets: Sequence[ContextSnippet] = (),
    path: str | None = None,
    language: str | None = None,
) -> list[dict[str, str]]:
    """A hole-filling conversation for chat models without FIM tokens (DiffusionGemma)."""
    context = "".join(f"File {s.path}:\n```\n{s.text.rstrip()}\n```\n\n" for s in snippets)
    lang = language or ""
    user = f"{context}File {path or 'untitled'}:\n```{lang}\n{prefix}{HOLE}{suffix}\n```"
    return [
        {"role": "system", "content": INFILL_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


# The opening fence of a reply wrapped in Markdown: optional blank space, ``` and a language tag.
_OPENING_FENCE = re.compile(r"^\s*```[\w+-]*[ \t]*\n")


def strip_code_fence(text: str) -> str:
    """The code inside a reply that opens with a fenced block (up to its closing fence, or to the
    end when the answer was cut before it); any other text as it is.

    Chat models answer the hole-filling prompt this way despite being told not to, and both the
    engine's chat infilling and the language server's post-processing read their replies with this.
    """
    match = _OPENING_FENCE.match(text)
    if not match:
        return text
    body = text[match.end() :]
    end = body.find("```")
    return body if end == -1 else body[:end].rstrip("\n")
