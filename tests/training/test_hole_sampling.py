"""Holes at statement boundaries, file reconstruction, editor windows and FIM examples."""

from __future__ import annotations

import ast
import random
import textwrap

import pytest

from engine.prompting import FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from engine.training.holes import (
    BLOCK,
    KINDS,
    LINE,
    LINE_REST,
    SPAN,
    ExampleBuilder,
    Hole,
    clip_prefix,
    clip_suffix,
    find_holes,
    multi_line_holes,
    sample_cut,
    single_line_holes,
)
from engine.training.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_tokenizer

SOURCE = textwrap.dedent(
    '''\
    """Module docstring."""
    import os


    @decorator
    def walk(top, limit=3):
        """Walk a tree."""
        found = []  # results
        for name in os.listdir(top):
            if name.startswith("."):
                continue
            found.append(name)
        a = 1; b = 2
        return found


    class Box:
        size = 0

        def grow(self, by):
            self.size += by
            return self.size
    '''
)

EXPECTED_LINES = {
    "import os\n",
    "@decorator\n",
    "def walk(top, limit=3):\n",
    "    found = []  # results\n",
    "    for name in os.listdir(top):\n",
    '        if name.startswith("."):\n',
    "            continue\n",
    "        found.append(name)\n",
    "    return found\n",
    "class Box:\n",
    "    size = 0\n",
    "    def grow(self, by):\n",
    "        self.size += by\n",
    "        return self.size\n",
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([SOURCE] * 30, vocab_size=360)


def test_single_line_holes_are_exactly_the_statement_lines():
    holes = single_line_holes(SOURCE)
    assert {h.middle for h in holes} == EXPECTED_LINES
    for hole in holes:
        assert hole.text == SOURCE
        assert hole.prefix == "" or hole.prefix.endswith("\n")
        assert hole.middle.endswith("\n") and hole.middle.count("\n") == 1


def test_docstrings_and_shared_lines_are_not_holes():
    middles = {h.middle for h in single_line_holes(SOURCE)}
    assert not any("docstring" in m or "Walk a tree" in m for m in middles)
    assert "    a = 1; b = 2\n" not in middles


def test_multi_line_holes_are_whole_statements_and_reconstruct_the_file():
    holes = multi_line_holes(SOURCE, max_lines=12)
    middles = {h.middle for h in holes}
    # the loop's body, the whole loop, and the method's body are among them
    assert '        if name.startswith("."):\n            continue\n        found.append(name)\n' in middles
    assert "        self.size += by\n        return self.size\n" in middles
    for hole in holes:
        assert hole.text == SOURCE
        assert hole.middle.count("\n") >= 2
        assert hole.prefix == "" or hole.prefix.endswith("\n")
        # whole statements: the dedented middle parses on its own
        ast.parse(textwrap.dedent(hole.middle))
    assert all(h.middle.count("\n") <= 3 for h in multi_line_holes(SOURCE, max_lines=3))


def test_holes_survive_unicode_before_them():
    text = "s = 'ünïcødé ∑'  # ✓\nx = 1\ny = 2\n"
    assert {h.middle for h in single_line_holes(text)} == {"s = 'ünïcødé ∑'  # ✓\n", "x = 1\n", "y = 2\n"}


def test_sampled_cuts_of_every_kind_reconstruct_the_file():
    holes = find_holes(SOURCE)
    rng = random.Random(0)
    seen = set()
    for _ in range(400):
        cut = sample_cut(holes, rng)
        assert cut is not None
        hole = cut.hole(SOURCE)
        assert hole.text == SOURCE and hole.middle
        seen.add(cut.kind)
        if cut.kind == LINE_REST:
            assert "\n" not in hole.middle and hole.suffix.startswith("\n")
            assert hole.prefix.rsplit("\n", 1)[-1].strip()  # the cursor is after some code
        if cut.kind in (LINE, BLOCK) and not hole.prefix.endswith("\n") and hole.prefix:
            assert hole.prefix.rsplit("\n", 1)[-1].strip() == ""  # cursor after the indentation
            assert hole.suffix.startswith("\n")
    assert seen == set(KINDS)
    assert sample_cut(holes, rng, {SPAN: 1.0}).kind == SPAN


def test_clip_prefix_starts_at_a_line_and_fits_the_budget(tokenizer):
    prefix = SOURCE + "    def shrink(self, by):\n        self.si"
    for budget in (1, 5, 20, 60):
        clipped = clip_prefix(tokenizer, prefix, budget)
        assert prefix.endswith(clipped)
        assert clipped.endswith("        self.si")
        start = len(prefix) - len(clipped)
        assert start == 0 or prefix[start - 1] == "\n"
        if clipped.count("\n"):
            assert len(tokenizer.encode(clipped, add_special_tokens=False).ids) <= budget
    assert clip_prefix(tokenizer, prefix, 10_000) == prefix


def test_clip_suffix_ends_at_a_line_and_fits_the_budget(tokenizer):
    suffix = ")\n" + SOURCE
    for budget in (1, 5, 20, 60):
        clipped = clip_suffix(tokenizer, suffix, budget)
        assert suffix.startswith(clipped) and clipped.startswith(")")
        if clipped.count("\n") > 1:
            assert clipped.endswith("\n")
            assert len(tokenizer.encode(clipped, add_special_tokens=False).ids) <= budget
    assert clip_suffix(tokenizer, suffix, 10_000) == suffix
    assert clip_suffix(tokenizer, suffix, 0) == ""


def test_example_is_the_engine_fim_layout_with_middle_eos_pad_canvas(tokenizer):
    hole = Hole(prefix="def f(x):\n    ", middle="return x + 1", suffix="\n\nprint(f(2))\n", kind=LINE)
    builder = ExampleBuilder(tokenizer, max_prefix_tokens=64, max_suffix_tokens=64, path_probability=1.0)
    example = builder.build(hole, canvas_length=16, path="pkg/m.py", rng=random.Random(0))
    assert example is not None
    ids = example.prompt_ids
    assert ids[0] == BOS_ID and ids[1] == tokenizer.token_to_id(FILE_SEP)
    assert ids[-1] == tokenizer.token_to_id(FIM_MIDDLE)
    assert ids.index(tokenizer.token_to_id(FIM_SUFFIX)) < ids.index(tokenizer.token_to_id(FIM_PREFIX))
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith("pkg/m.py\n")
    assert len(example.canvas_ids) == 16
    n = example.middle_tokens
    assert tokenizer.decode(example.canvas_ids[:n]) == "return x + 1"
    assert example.canvas_ids[n] == EOS_ID and set(example.canvas_ids[n + 1 :]) == {PAD_ID}


def test_example_that_does_not_fit_the_canvas_is_refused(tokenizer):
    hole = Hole(prefix="", middle="found.append(name)\n" * 10, suffix="", kind=BLOCK)
    assert ExampleBuilder(tokenizer).build(hole, canvas_length=8) is None
