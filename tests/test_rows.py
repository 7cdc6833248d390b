"""Where a row ends (engine/rows.py): EOS, trailing pads, the quota, stop strings, stream hold-back."""

from __future__ import annotations

import subprocess
import sys

from engine.rows import RowReader, canvas_end, first_stop, held_back

EOS, PAD = 1, 0


def letters(ids: list[int]) -> str:
    """A decoder for the tests: token n is the letter chr(ord('a') + n - 10); specials vanish."""
    return "".join(chr(ord("a") + t - 10) for t in ids if t >= 10)


def reader(max_tokens: int = 32, stop: tuple[str, ...] = ()) -> RowReader:
    return RowReader(max_tokens, letters, eos_ids=[EOS], pad_id=PAD, stop=stop)


def test_eos_ends_the_row_and_nothing_after_it_counts():
    row = reader()
    assert row.add_canvas([10, 11, EOS, 12]) == "ab"
    assert row.tokens == [10, 11] and row.finish_reason == "stop" and row.text == "ab"
    assert row.add_canvas([13, 14]) == ""  # a finished row takes no more canvases


def test_a_canvas_that_ends_in_pads_ends_the_row_at_the_first_of_them():
    row = reader()
    assert row.add_canvas([10, 11, PAD, PAD]) == "ab"
    assert row.tokens == [10, 11] and row.finish_reason == "stop"


def test_pads_followed_by_other_tokens_are_left_as_they_are():
    row = reader()
    row.add_canvas([10, PAD, 11, 12])
    assert row.tokens == [10, PAD, 11, 12] and not row.finished
    assert canvas_end([10, PAD, 11], [EOS], PAD) == (3, False)
    assert canvas_end([PAD, PAD], [EOS], PAD) == (0, True)
    assert canvas_end([10, EOS, PAD], [EOS], PAD) == (1, True)


def test_the_quota_ends_the_row_with_length_but_eos_at_the_quota_is_a_stop():
    row = reader(max_tokens=3)
    row.add_canvas([10, 11])
    row.add_canvas([12, 13])
    assert row.tokens == [10, 11, 12] and row.finish_reason == "length"
    exact = reader(max_tokens=2)
    exact.add_canvas([10, 11, EOS])
    assert exact.tokens == [10, 11] and exact.finish_reason == "stop"


def test_a_stop_string_cuts_the_text_and_is_held_back_while_it_may_still_come():
    row = reader(stop=("cd",))
    assert row.add_canvas([10, 11, 12]) == "ab"  # "c" may start "cd": held back
    assert not row.finished
    assert row.add_canvas([13, 14]) == ""
    assert row.text == "ab" and row.finish_reason == "stop" and row.cut_by_stop_string
    other = reader(stop=("cd",))
    assert other.add_canvas([10, 12]) == "a" and other.add_canvas([14]) == "ce"  # "c" was not a stop


def test_the_end_of_the_stream_releases_what_was_held_back():
    row = reader(stop=("cd",))
    assert row.add_canvas([10, 12]) == "a"
    assert row.finish() == "c" and row.finish_reason == "length"


def test_stop_string_helpers():
    assert first_stop("abcabc", ["ca", "b"]) == 1
    assert first_stop("abc", None) is None and first_stop("abc", [""]) is None
    assert held_back("abc", ["cd", "bcx"]) == 2 and held_back("abc", ["x"]) == 0


def test_shared_types_import_without_torch():
    """The language server's shared types (engine.requests, errors, prompting, rows) need no torch."""
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is not installed')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import dgemma_lsp.postprocess, dgemma_lsp.backends.base, engine.requests, engine.rows\n"
        "from engine import InfillRequest, EngineError\n"
        "from engine.prompting import strip_code_fence\n"
        "from dgemma_lsp.postprocess import strip_code_fence as lsp_strip\n"
        "assert lsp_strip is strip_code_fence and 'torch' not in sys.modules\n"
        "try:\n"
        "    from engine import DiffusionGemmaModel\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"  # and the model itself does need torch
