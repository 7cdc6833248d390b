"""Code actions: which are offered where (tree-sitter only), and how answers become edits that parse.

The model is replaced here by a scripted answer so that each rule is checked on a known input;
tests/lsp/test_server_e2e.py runs the same actions through the real engine.
"""

from __future__ import annotations

import pytest

from dgemma_lsp import actions, syntax
from dgemma_lsp.context import TokenCounter
from engine.requests import InfillRequest


class Scripted:
    """Answers infill requests from a list (repeating the last answer); records the requests."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.requests: list[InfillRequest] = []

    def __call__(self, request: InfillRequest) -> str:
        self.requests.append(request)
        return self.answers[min(len(self.requests), len(self.answers)) - 1]


def offered(
    text: str, grammar: str, marker: str = "|", selection: str | None = None
) -> dict[str, actions.Candidate]:
    start = text.index(marker)
    clean = text.replace(marker, "", 1)
    end = start
    if selection is not None:
        start = clean.index(selection)
        end = start + len(selection)
    tree = syntax.parse(grammar, syntax.encode(clean))
    return {c.action: c for c in actions.find_actions(clean, grammar, tree, start, end)}


def run(
    text: str,
    grammar: str,
    action: str,
    infill,
    selection: str | None = None,
    path: str = "/x/file",
    infill_many=None,
) -> tuple[str, list]:
    clean = text.replace("|", "", 1)
    candidate = offered(text, grammar, selection=selection)[action]
    tree = syntax.parse(grammar, syntax.encode(clean))
    edits = actions.compute(
        candidate, clean, grammar, tree, infill, TokenCounter(), 64, 1024, path, infill_many=infill_many
    )
    return actions.apply_edits(clean, edits), edits


@pytest.mark.parametrize(
    "body",
    ["pass", "...", "raise NotImplementedError", 'raise NotImplementedError("later")', "# TODO: write this"],
)
def test_python_stub_bodies_offer_implement(body):
    text = f"def add(a, b):\n    |{body}\n\n\nprint(add(1, 2))\n"
    assert "implement" in offered(text, "python")


def test_empty_and_docstring_only_python_bodies_offer_implement():
    assert "implement" in offered("def add(a, b):|\n\nx = 1\n", "python")
    assert "implement" in offered('def add(a, b):\n    """Add."""|\n', "python")


def test_real_bodies_do_not_offer_implement():
    found = offered("def add(a, b):\n    |return a + b\n", "python")
    assert "implement" not in found and "docstring" in found


@pytest.mark.parametrize(
    ("grammar", "text"),
    [
        ("javascript", "function add(a, b) {|\n}\n"),
        ("typescript", "function add(a: number, b: number): number {|\n  // TODO\n}\n"),
        ("rust", "fn add(a: i32, b: i32) -> i32 {|\n    todo!()\n}\n"),
        ("go", 'package m\n\nfunc Add(a, b int) int {|\n\tpanic("not implemented")\n}\n'),
        (
            "java",
            "class M {\n  int add(int a, int b) {|\n    throw new UnsupportedOperationException();\n  }\n}\n",
        ),
        ("c", "int add(int a, int b) {|\n}\n"),
        ("cpp", "int add(int a, int b) {|\n    // TODO\n}\n"),
    ],
)
def test_brace_language_stubs_offer_implement(grammar, text):
    assert "implement" in offered(text, grammar)


def test_placeholders_are_found_and_offered_in_functions_with_code():
    text = "def area(shape):\n    |kind = shape.kind\n    if kind == 'circle':\n        ...\n    # TODO: squares\n    return ...\n"
    found = offered(text, "python")
    assert "placeholders" in found and "implement" not in found
    assert "3 placeholders" in found["placeholders"].title


def test_selection_offers_rewrite_of_whole_lines():
    text = "x = 1\ny = [i for i in range(10) if i % 2 == 0]|\nz = 3\n"
    found = offered(text, "python", selection="[i for i in range(10)")
    rewrite = found["rewrite"]
    clean = text.replace("|", "")
    assert clean[rewrite.start : rewrite.end] == "y = [i for i in range(10) if i % 2 == 0]"


def test_implement_python_body():
    text = "def add(a, b):\n    |pass\n\n\nprint(add(1, 2))\n"
    result, edits = run(
        text, "python", "implement", Scripted("total = a + b\n    return total\nprint('junk')")
    )
    assert result == "def add(a, b):\n    total = a + b\n    return total\n\n\nprint(add(1, 2))\n"
    assert len(edits) == 1


def test_implement_empty_python_body_after_a_docstring():
    text = 'def add(a, b):\n    """Add two numbers."""|\n\nx = 1\n'
    result, _ = run(text, "python", "implement", Scripted("return a + b"))
    assert result == 'def add(a, b):\n    """Add two numbers."""\n    return a + b\n\nx = 1\n'


def test_implement_brace_body_reindents_and_drops_the_repeated_closer():
    text = "function add(a, b) {|\n}\n"
    result, _ = run(text, "javascript", "implement", Scripted("const s = a + b;\n    return s;\n}\n"))
    assert result == "function add(a, b) {\n    const s = a + b;\n    return s;\n}\n"
    assert syntax.text_error_count("javascript", result) == 0


def test_answers_that_never_parse_give_an_error_and_no_edit():
    model = Scripted("return (a +")
    with pytest.raises(actions.ActionError):
        run("def add(a, b):\n    |pass\n", "python", "implement", model)
    assert len(model.requests) == actions.ATTEMPTS
    assert [r.seed for r in model.requests] == list(range(actions.ATTEMPTS))


def test_a_bad_first_answer_is_retried_with_another_seed():
    result, _ = run("def add(a, b):\n    |pass\n", "python", "implement", Scripted("", "return a + b"))
    assert result == "def add(a, b):\n    return a + b\n"


def test_trailing_lines_that_break_the_syntax_are_trimmed():
    result, _ = run(
        "def add(a, b):\n    |pass\n", "python", "implement", Scripted("s = a + b\n    return s\n    if (s")
    )
    assert result == "def add(a, b):\n    s = a + b\n    return s\n"


def test_python_docstring():
    model = Scripted('Return the sum of a and b."""\n    junk')
    result, _ = run("def add(a, b):\n    |return a + b\n", "python", "docstring", model)
    assert result == 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n'
    assert model.requests[0].prefix.endswith('    """')
    assert model.requests[0].suffix.startswith('"""')


def test_python_multi_line_docstring_for_a_class():
    result, _ = run(
        "class Stack:|\n    def push(self, x):\n        pass\n",
        "python",
        "docstring",
        Scripted("A stack.\n\nItems go on top."),
    )
    assert result.startswith('class Stack:\n    """A stack.\n\n    Items go on top.\n    """\n    def push')
    assert syntax.text_error_count("python", result) == 0


def test_doc_comments_in_brace_languages():
    js, _ = run(
        "function add(a, b) {|\n  return a + b;\n}\n",
        "javascript",
        "docstring",
        Scripted("Adds two numbers. */ x"),
    )
    assert js == "/**\n * Adds two numbers.\n */\nfunction add(a, b) {\n  return a + b;\n}\n"
    go, _ = run(
        "package m\n\nfunc Add(a, b int) int {|\n\treturn a + b\n}\n",
        "go",
        "docstring",
        Scripted("returns a plus b."),
    )
    assert "// Add returns a plus b.\nfunc Add" in go
    rust, _ = run("fn add(a: i32) -> i32 {|\n    a\n}\n", "rust", "docstring", Scripted("Adds.\nTwice."))
    assert rust.startswith("/// Adds.\n/// Twice.\nfn add")


def test_docstring_without_any_words_is_refused():
    with pytest.raises(actions.ActionError):
        run("def add(a, b):\n    |return a + b\n", "python", "docstring", Scripted("   \n  ", "***", "\x00"))


AREA = "def area(shape):\n    |kind = shape.kind\n    if kind == 'circle':\n        ...\n    return ...\n"


def test_fill_placeholders_one_after_another():
    model = Scripted("return 3.14 * shape.r ** 2", "0")
    result, edits = run(AREA, "python", "placeholders", model)
    assert (
        result
        == "def area(shape):\n    kind = shape.kind\n    if kind == 'circle':\n        return 3.14 * shape.r ** 2\n    return 0\n"
    )
    assert len(edits) == 2
    # The second hole saw the first one filled.
    assert "return 3.14 * shape.r ** 2" in model.requests[1].prefix


def test_placeholder_that_cannot_be_filled_is_kept_and_the_others_are_filled():
    text = "def f(x):\n    |y = x\n    if y:\n        pass\n    return ...\n"
    answers = Scripted("(((", "(((", "(((", "y * 2")
    result, edits = run(text, "python", "placeholders", answers)
    assert result == "def f(x):\n    y = x\n    if y:\n        pass\n    return y * 2\n"
    assert len(edits) == 1


def test_rewrite_selected_lines_sends_the_original_as_context():
    text = "def evens():\n    result = []\n    for i in range(10):\n        if i % 2 == 0:\n            result.append(i)|\n    return result\n"
    selection = (
        "    result = []\n    for i in range(10):\n        if i % 2 == 0:\n            result.append(i)"
    )
    model = Scripted("result = [i for i in range(10) if i % 2 == 0]")
    result, _ = run(text, "python", "rewrite", model, selection=selection)
    assert result == "def evens():\n    result = [i for i in range(10) if i % 2 == 0]\n    return result\n"
    assert model.requests[0].snippets[0].text == selection


class ScriptedBatch:
    """Answers a batch of holes at once (one list per call); records the batches."""

    def __init__(self, *batches: list[str]):
        self.batches = list(batches)
        self.calls: list[list[InfillRequest]] = []

    def __call__(self, requests: list[InfillRequest]) -> list[str]:
        self.calls.append(requests)
        return self.batches[len(self.calls) - 1]


def test_placeholders_are_filled_in_one_batch_when_the_backend_allows():
    one_by_one = Scripted("unused")
    batch = ScriptedBatch(["return 3.14 * shape.r ** 2", "0"])
    result, _ = run(AREA, "python", "placeholders", one_by_one, path="/x.py", infill_many=batch)
    assert result.endswith("        return 3.14 * shape.r ** 2\n    return 0\n")
    assert len(batch.calls) == 1 and len(batch.calls[0]) == 2
    assert one_by_one.requests == []
    # Each hole of the batch sees the other placeholder as it was.
    assert "return ..." in batch.calls[0][0].suffix and "        ..." in batch.calls[0][1].prefix


def test_holes_the_batch_could_not_fill_are_retried_one_by_one():
    one_by_one = Scripted("shape.r * 2")
    batch = ScriptedBatch(["return (((", "0"])
    result, _ = run(AREA, "python", "placeholders", one_by_one, path="/x.py", infill_many=batch)
    assert "        shape.r * 2\n    return 0\n" in result
    assert one_by_one.requests[0].seed == 1 and "return 0" in one_by_one.requests[0].suffix
