"""Where a row ends: the one place that turns committed canvases into text and a finish reason.

A row ends at the first of
- an EOS token ("stop");
- a run of `<pad>` that fills the rest of a canvas, with no EOS before it ("stop", as if EOS stood
  at the first of those pads): the embedded model often pads the canvas and puts its EOS last, or
  not at all; pads followed by other tokens are text like any other;
- its token quota ("length");
- a stop string in the decoded text ("stop"; the text ends before it).

The committed tokens themselves are never changed here (parity with transformers is about them);
only how they are read. While streaming, the end of the text that could still become a stop
string, or an incomplete UTF-8 sequence, is held back until the next canvas decides it.

Used by the SDK (`engine.api`), the HTTP server's engine thread and its batches alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

STOP, LENGTH = "stop", "length"
REPLACEMENT = "\ufffd"  # what the tokenizer decodes a cut UTF-8 sequence to


def first_stop(text: str, stop: Sequence[str] | None) -> int | None:
    """Where the first stop string begins in `text`, or None."""
    if not stop:
        return None
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def canvas_end(canvas: Sequence[int], eos_ids: Collection[int], pad_id: int | None) -> tuple[int, bool]:
    """(tokens of `canvas` that belong to the row, whether the row ends in this canvas)."""
    for index, token in enumerate(canvas):
        if token in eos_ids:
            return index, True
    if pad_id is not None and canvas and canvas[-1] == pad_id:
        start = len(canvas)
        while start > 0 and canvas[start - 1] == pad_id:
            start -= 1
        return start, True
    return len(canvas), False


class RowReader:
    """Reads one row canvas by canvas: its tokens, its text, its finish reason, its stream deltas."""

    def __init__(
        self,
        max_tokens: int,
        decode: Callable[[list[int]], str],
        eos_ids: Collection[int],
        pad_id: int | None = None,
        stop: Sequence[str] = (),
    ):
        self.max_tokens = max_tokens
        self.decode = decode
        self.eos_ids = frozenset(eos_ids)
        self.pad_id = pad_id
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None  # None while the row may go on
        self.cut_by_stop_string = False
        self._emitted = ""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add_canvas(self, canvas: Sequence[int]) -> str:
        """Take one committed canvas of this row; the text that is safe to show now."""
        if self.finished:
            return ""
        end, ended = canvas_end(canvas, self.eos_ids, self.pad_id)
        room = self.max_tokens - len(self.tokens)
        if end > room or (end == room and not ended):
            end, reason = room, LENGTH
        else:
            reason = STOP if ended else None
        self.tokens.extend(canvas[:end])
        text = self.decode(self.tokens)
        cut = first_stop(text, self.stop)
        if cut is not None:
            text, reason, self.cut_by_stop_string = text[:cut], STOP, True
        elif reason != STOP and text.endswith(REPLACEMENT):
            # An incomplete UTF-8 sequence: the next canvas may complete it; at the quota it is dropped.
            text = text.rstrip(REPLACEMENT)
        self.text = text
        self.finish_reason = reason
        return self._delta()

    def finish(self) -> str:
        """No canvas follows (the context is full): the row ends at its quota; the rest of the text."""
        if self.finish_reason is None:
            self.finish_reason = LENGTH
        return self._delta()

    def _delta(self) -> str:
        ready = len(self.text) if self.finished else len(self.text) - held_back(self.text, self.stop)
        shown = self.text[:ready]
        # Only ever extend what was shown (a later canvas may decode earlier bytes differently).
        if len(shown) <= len(self._emitted) or not shown.startswith(self._emitted):
            return ""
        delta = shown[len(self._emitted) :]
        self._emitted = shown
        return delta
