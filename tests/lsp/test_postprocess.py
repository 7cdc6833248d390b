"""Every post-processing rule on real code: the cursor is where `|` was, the model's raw answer is given."""

from __future__ import annotations

from dgemma_lsp import syntax
from dgemma_lsp.completion import make_hole
from dgemma_lsp.decide import decide
from dgemma_lsp.postprocess import (
    Suggestion,
    cut_at_junk,
    is_repetitive,
    postprocess,
    strip_code_fence,
    strip_special_tokens,
    trim_to_valid,
)
from dgemma_lsp.settings import Settings
from dgemma_lsp.text import detect_indent_unit


def run(marked: str, raw: str, grammar: str | None = "python") -> Suggestion | None:
    offset = marked.index("|")
    text = marked.replace("|", "", 1)
    tree = syntax.parse(grammar, syntax.encode(text)) if grammar else None
    decision = decide(text, offset, Settings(), grammar=grammar, tree=tree)
    assert decision.suggest, decision.reason
    hole = make_hole(text, offset, decision, detect_indent_unit(text, default=None))
    return postprocess(raw, hole)


def applied(marked: str, suggestion: Suggestion) -> str:
    offset = marked.index("|")
    text = marked.replace("|", "", 1)
    return text[:offset] + suggestion.text + text[offset + suggestion.replace_after :]


FIB = "def fibonacci(n):|\n\n\nprint(fibonacci(10))\n"


# --- special tokens and junk ----------------------------------------------------------------


def test_special_tokens_end_the_hole_and_fillers_are_dropped():
    assert strip_special_tokens("a + b<|file_sep|>other.py\nx = 1") == "a + b"
    assert strip_special_tokens("a<pad><pad> + b<eos>tail") == "a + b"
    assert strip_special_tokens("x<|fim_middle|>y") == "x"
    assert strip_special_tokens("value<|im_end|>") == "value"
    suggestion = run("total = sum(|)\n", "values<|fim_suffix|>)\nprint(total)")
    assert suggestion is not None and suggestion.text == "values"


def test_control_characters_and_broken_bytes_end_the_hole():
    assert cut_at_junk("x + 1\x0e\x1ejunk") == "x + 1"
    assert cut_at_junk("name\ufffd\ufffdrest") == "name"
    assert run("x = |\n", "\x00\x01") is None


def test_code_fences_from_chat_answers_are_removed():
    assert strip_code_fence("```python\nreturn a + b\n```") == "return a + b"
    suggestion = run(FIB, "```python\n    return n\n```")
    assert suggestion is not None and suggestion.text == "\n    return n"


# --- one line or one block ------------------------------------------------------------------


def test_no_double_space_after_the_space_the_user_typed():
    suggestion = run("total = |\n", " sum(values)")
    assert suggestion is not None and suggestion.text == "sum(values)"
    kept = run("total =|\n", " sum(values)")
    assert kept is not None and kept.text == " sum(values)"


def test_single_line_keeps_only_the_first_line():
    suggestion = run("names = [p.name for p in |]\n", "people]\nprint(names)")
    assert suggestion is not None and suggestion.text == "people]"
    assert suggestion.replace_after == 1


def test_single_line_on_an_indented_blank_line_drops_extra_indentation():
    suggestion = run("def f(x):\n    y = x * 2\n    |\n    return y\n", "      y += 1\n")
    assert suggestion is not None and suggestion.text == "y += 1"


def test_block_stops_when_indentation_drops_below_the_cursor():
    suggestion = run(
        FIB, "\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\nprint('x')"
    )
    assert suggestion is not None
    assert (
        suggestion.text == "\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)"
    )
    result = applied(FIB, suggestion)
    assert syntax.text_error_count("python", result) == 0


def test_block_stops_at_the_closing_brace_the_document_already_has():
    marked = "function add(a, b) {|\n}\n\nconsole.log(add(1, 2));\n"
    suggestion = run(marked, "\n  return a + b;\n}\n\nfunction sub(a, b) {", "javascript")
    assert suggestion is not None and suggestion.text == "\n  return a + b;"
    assert syntax.text_error_count("javascript", applied(marked, suggestion)) == 0


def test_block_keeps_a_closing_brace_the_document_lacks():
    marked = "function add(a, b) {|"
    suggestion = run(marked, "\n  return a + b;\n}\nadd(1, 2);", "javascript")
    assert suggestion is not None and suggestion.text == "\n  return a + b;\n}"


def test_block_stops_where_a_bracket_opened_before_the_hole_closes():
    marked = "class Stack:\n    def push(self, item):\n        |\n"
    suggestion = run(marked, "self.items.append(item)\n        self.size += 1) + 3\n        return")
    assert suggestion is not None and suggestion.text == "self.items.append(item)"


def test_block_is_limited_to_max_lines():
    raw = "\n" + "\n".join(f"    x{i} = {i}" for i in range(20))
    suggestion = run(FIB, raw)
    assert suggestion is not None and suggestion.text.count("\n") == Settings().max_lines


# --- never repeat what is there ---------------------------------------------------------------


def test_single_line_that_repeats_the_next_line_is_rejected():
    marked = "def total(xs):\n    result = 0\n    |\n    return result\n"
    assert run(marked, "return result") is None


def test_text_already_after_the_cursor_is_not_repeated():
    suggestion = run("value = |  # default\n", "42  # default")
    assert suggestion is not None and suggestion.text == "42"


def test_suggestion_that_only_retypes_the_closer_is_rejected():
    assert run("print(|)\n", ")") is None


def test_block_line_that_repeats_the_next_document_line_is_cut():
    marked = "def load(path):\n    |\n\nresult = load('x')\n"
    suggestion = run(marked, "with open(path) as f:\n        return f.read()\nresult = load('x')")
    assert suggestion is not None and "result = load" not in suggestion.text


def test_repeat_of_the_line_above_is_rejected():
    marked = "counts = {}\ncounts = {}\n|\n"
    assert run(marked, "counts = {}") is None


# --- indentation -----------------------------------------------------------------------------


def test_reindent_from_two_spaces_to_the_documents_four():
    marked = "def helper():\n    return 1\n\n\ndef f(x):|\n"
    suggestion = run(marked, "\n  if x:\n    return 1\n  return 2")
    assert suggestion is not None and suggestion.text == "\n    if x:\n        return 1\n    return 2"


def test_reindent_spaces_to_tabs_in_a_go_file():
    marked = "package main\n\nfunc main() {\n\tx := 1\n\t_ = x\n}\n\nfunc Sum(xs []int) int {|\n}\n"
    suggestion = run(
        marked,
        "\n    total := 0\n    for _, x := range xs {\n        total += x\n    }\n    return total\n}",
        "go",
    )
    assert suggestion is not None
    assert suggestion.text == "\n\ttotal := 0\n\tfor _, x := range xs {\n\t\ttotal += x\n\t}\n\treturn total"
    assert syntax.text_error_count("go", applied(marked, suggestion)) == 0


def test_missing_first_line_indentation_after_an_opener_is_added():
    suggestion = run(FIB, "\nreturn n")
    assert suggestion is not None and suggestion.text == "\n    return n"


def test_text_on_the_opener_line_moves_to_the_body():
    suggestion = run(FIB, " return n")
    assert suggestion is not None and suggestion.text == "\n    return n"


def test_crlf_documents_get_crlf_suggestions():
    marked = "def f(x):|\r\n\r\nprint(1)\r\n"
    suggestion = run(marked, "\n    y = x\n    return y")
    assert suggestion is not None and suggestion.text == "\r\n    y = x\r\n    return y"


# --- auto-closed brackets and quotes ----------------------------------------------------------


def test_auto_closed_bracket_is_replaced_not_doubled():
    marked = "print(|)\n"
    suggestion = run(marked, "'hello')")
    assert suggestion is not None and suggestion.replace_after == 1
    assert applied(marked, suggestion) == "print('hello')\n"


def test_suggestion_without_the_closer_is_inserted_before_it():
    marked = "print(|)\n"
    suggestion = run(marked, "'hello'")
    assert suggestion is not None and suggestion.replace_after == 0
    assert applied(marked, suggestion) == "print('hello')\n"


def test_auto_closed_quote_and_bracket_together():
    marked = 'print("|")\n'
    suggestion = run(marked, 'hello, world")')
    assert suggestion is not None and suggestion.replace_after == 2
    assert applied(marked, suggestion) == 'print("hello, world")\n'


def test_nested_closers_after_the_cursor():
    marked = "result = max(len(|))\n"
    suggestion = run(marked, "items))")
    assert suggestion is not None and applied(marked, suggestion) == "result = max(len(items))\n"


def test_suggestion_that_would_unbalance_the_line_is_rejected():
    assert run("print(|)\n", "a), b") is None
    # A single line closes what it opens, also at the end of a line (so "foo(" alone is not offered).
    assert run("codecs.S|\n", "treamWriter(((()") is None
    assert run("handler = logging.getLogger|\n", "(") is None
    kept = run("handler = logging.getLogger|\n", "(__name__)")
    assert kept is not None and kept.text == "(__name__)"


# --- rejections --------------------------------------------------------------------------------


def test_empty_and_whitespace_only_output_is_rejected():
    assert run("x = |\n", "") is None
    assert run("x = |\n", "   \n  \n") is None
    assert run(FIB, "\n\n   \n") is None


def test_repetitive_output_is_rejected():
    assert is_repetitive("foo foo foo foo foo foo foo foo")
    assert is_repetitive("))))))))")
    assert is_repetitive("abcabcabcabcabcabc")
    assert not is_repetitive("return fibonacci(n - 1) + fibonacci(n - 2)")
    assert not is_repetitive('print("=" * 60)  # ------------------------------')
    assert not is_repetitive("SEPARATOR = '================================'")
    assert not is_repetitive("x = [0, 0, 0, 0]")
    assert is_repetitive("self.self.self.self.self.self.self")
    assert run(FIB, "\n    x = 1\n    x = 1\n    x = 1\n    x = 1") is None
    assert run("x = |\n", "1, 1, 1, 1, 1, 1, 1, 1, 1") is None


def test_trim_to_valid_drops_trailing_lines_that_break_the_syntax():
    prefix = "def f(x):"
    suffix = "\n"
    suggestion = Suggestion("\n    y = x\n    return (y", 0)

    def valid(text: str, replace: int) -> bool:
        return syntax.text_error_count("python", prefix + text + suffix) == 0

    offset_text = prefix + "|" + suffix
    hole = make_hole(
        offset_text.replace("|", ""), len(prefix), decide(prefix + suffix, len(prefix), Settings()), "    "
    )
    trimmed = trim_to_valid(suggestion, hole, valid)
    assert trimmed is not None and trimmed.text == "\n    y = x"
