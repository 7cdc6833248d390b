"""Whether and how much to suggest, on real code (the cursor is where `|` was)."""

from __future__ import annotations

import pytest

from dgemma_lsp import syntax
from dgemma_lsp.decide import decide
from dgemma_lsp.settings import Settings


def at_cursor(
    marked: str, grammar: str | None = "python", settings: Settings | None = None, limit: int | None = None
):
    offset = marked.index("|")
    text = marked.replace("|", "", 1)
    tree = syntax.parse(grammar, syntax.encode(text)) if grammar else None
    return decide(text, offset, settings or Settings(), grammar=grammar, tree=tree, canvas_limit=limit)


@pytest.mark.parametrize(
    "marked",
    [
        "def parse_args(argv):\n    parser = argparse.Argu|mentParser()\n",
        "result = comp|ute(x)\n",
        "items = |values\n",
    ],
)
def test_nothing_inside_or_before_an_identifier(marked):
    decision = at_cursor(marked)
    assert decision.mode == "none"
    assert "identifier" in decision.reason


def test_mid_word_is_configurable():
    assert at_cursor("result = comp|ute(x)\n", settings=Settings(suggest_mid_word=True)).mode == "single"


def test_single_line_when_text_follows_the_cursor():
    decision = at_cursor("print(|)\n")
    assert decision.mode == "single" and decision.max_lines == 1
    assert at_cursor("if (x > |) {\n}\n", "javascript").mode == "single"


def test_single_line_at_the_end_of_a_line():
    assert at_cursor("import os\nvalue = os.path.join(|").mode == "single"
    assert at_cursor("total = 0\nfor item in items:\n    total +=|\n").mode == "single"


def test_multi_line_after_a_block_opener_with_an_empty_block():
    decision = at_cursor("def fibonacci(n):|\n\n\nprint(fibonacci(10))\n")
    assert decision.mode == "multi" and decision.after_opener
    assert decision.block_indent == ""
    brace = at_cursor("function add(a, b) {|\n}\n", "javascript")
    assert brace.mode == "multi" and brace.after_opener


def test_multi_line_in_an_empty_block():
    decision = at_cursor(
        "class Stack:\n    def push(self, item):\n        |\n\n    def pop(self):\n        pass\n"
    )
    assert decision.mode == "multi" and not decision.after_opener
    assert decision.block_indent == "        "
    go = at_cursor("func Sum(xs []int) int {\n\t|\n}\n", "go")
    assert go.mode == "multi" and go.block_indent == "\t"


def test_no_block_at_an_opener_whose_block_has_a_body():
    decision = at_cursor("def f(x):|\n    return x\n")
    assert decision.mode == "none"


def test_blank_line_in_a_non_empty_block_is_single():
    decision = at_cursor("def f(x):\n    y = x * 2\n    |\n    return y\n")
    assert decision.mode == "single"


def test_comments_and_strings_are_configurable():
    in_comment = "x = 1  # compute the |\n"
    assert at_cursor(in_comment).mode == "single"
    assert at_cursor(in_comment, settings=Settings(suggest_in_comments=False)).mode == "none"
    in_string = 'message = "hello |"\n'
    assert at_cursor(in_string, settings=Settings(suggest_in_strings=False)).reason == "inside a string"


def test_canvas_length_follows_the_decision_and_the_model_limit():
    settings = Settings(single_line_tokens=20, multi_line_tokens=80)
    assert at_cursor("x = |\n", settings=settings).canvas_tokens == 20
    assert at_cursor("def f():|\n", settings=settings).canvas_tokens == 80
    assert at_cursor("def f():|\n", settings=settings, limit=64).canvas_tokens == 64
    assert at_cursor("def f():|\n", settings=Settings(max_lines=3)).max_lines == 3


def test_nothing_in_an_empty_document_or_when_disabled():
    assert at_cursor("|").mode == "none"
    assert at_cursor("   |\n").mode == "none"
    assert at_cursor("x = |\n", settings=Settings(enabled=False)).mode == "none"


def test_plain_text_uses_line_rules():
    assert at_cursor("Dear team,\nthe release |\n", grammar=None).mode == "single"
