"""Context building: windows, snippets in priority order, the token budget, a stable prompt start."""

from __future__ import annotations

from dgemma_lsp.context import TokenCounter, build_context, estimate_tokens, prefill_cap
from dgemma_lsp.documents import Document
from dgemma_lsp.positions import Encoding
from engine.prompting import FIM_MIDDLE, fim_prompt

# A real-looking module: imports at the top, a helper far above the cursor, a class whose
# method body is far below its header.
FILLER = "".join(f"    def method_{i}(self, value):\n        return value * {i}\n\n" for i in range(40))
MODULE = (
    "import json\nimport os\nfrom pathlib import Path\n\n\n"
    "def load_config(path):\n    with open(path) as handle:\n        return json.load(handle)\n\n\n"
    "class Service:\n    def __init__(self, root):\n        self.root = Path(root)\n\n"
    + FILLER
    + "    def start(self):\n"
    "        config = load_config(os.path.join(self.root, 'service.json'))\n"
    "        helper = Helper(config)\n"
    "        CURSOR\n"
    "        return helper\n"
)
OTHER = (
    "class Helper:\n    def __init__(self, config):\n        self.config = config\n\n"
    "    def run(self):\n        return self.config\n"
)


def document_with_cursor(text: str = MODULE, uri: str = "file:///proj/service.py"):
    offset = text.index("CURSOR")
    return Document(uri, text.replace("CURSOR", "", 1), "python", 1), offset


def test_small_files_fit_whole_and_need_no_snippets():
    doc, offset = document_with_cursor("import os\n\ndef f():\n    CURSOR\n")
    context = build_context(doc, offset, 1024, TokenCounter())
    assert context.prefix == "import os\n\ndef f():\n    "
    assert context.suffix == "\n"
    assert context.snippets == []


def test_budget_is_respected_and_windows_are_line_aligned():
    doc, offset = document_with_cursor()
    count = TokenCounter()
    for budget in (128, 256, 512, 1024):
        context = build_context(doc, offset, budget, count)
        total = (
            count(context.prefix)
            + count(context.suffix)
            + sum(count(s.text) + count(s.path) + 4 for s in context.snippets)
        )
        assert total <= budget * 1.05 + 8, (
            budget,
            total,
        )  # per-line counting may differ from whole-text counting
        assert context.prefix_start == 0 or doc.text[context.prefix_start - 1] == "\n"
        assert context.prefix.endswith("        ") and doc.text.startswith(
            context.prefix, context.prefix_start
        )


def test_snippets_in_priority_order_with_the_most_important_last():
    doc, offset = document_with_cursor()
    helper_doc = Document("file:///proj/helper.py", OTHER, "python", 1)
    context = build_context(doc, offset, 600, TokenCounter(), others=[helper_doc], root="/proj")
    kinds = [s.kind for s in context.snippets]
    assert kinds[-1] == "scope" and kinds[-2] == "imports", kinds
    scope = context.snippets[-1]
    assert scope.text == "class Service:\n    def start(self):" or scope.text == "class Service:"
    assert "import json" in context.snippets[-2].text
    definitions = {s.text.splitlines()[0]: s for s in context.snippets if s.kind == "definition"}
    assert "def load_config(path):" in definitions  # from this file, outside the window
    assert "class Helper:" in definitions  # from another open document
    assert definitions["class Helper:"].path == "helper.py"


def test_snippets_already_visible_in_the_window_are_not_repeated():
    doc, offset = document_with_cursor()
    context = build_context(doc, offset, 100_000, TokenCounter())
    assert context.prefix_start == 0
    assert context.snippets == []


def test_low_priority_snippets_are_dropped_first_when_the_budget_is_tight():
    doc, offset = document_with_cursor()
    helper_doc = Document("file:///proj/helper.py", OTHER, "python", 1)
    roomy = build_context(doc, offset, 800, TokenCounter(), others=[helper_doc])
    tight = build_context(doc, offset, 130, TokenCounter(), others=[helper_doc])
    assert len(tight.snippets) < len(roomy.snippets)
    assert [s.kind for s in tight.snippets][-1] == "scope"


def test_recent_edits_outside_the_window_become_snippets():
    doc, offset = document_with_cursor()
    doc.apply_change((4, 0), (4, 0), "TIMEOUT = 30\n", Encoding.UTF16, 2)
    offset += len("TIMEOUT = 30\n")
    context = build_context(doc, offset, 1000, TokenCounter())
    edits = [s for s in context.snippets if s.kind == "recent_edit"]
    assert edits and "TIMEOUT = 30" in edits[0].text


def prompt_starts(typed: str) -> list[str]:
    """The prompt up to the line being typed, after each keystroke of `typed`."""
    doc, offset = document_with_cursor()
    helper_doc = Document("file:///proj/helper.py", OTHER, "python", 1)
    line, character = doc.position_at(offset, Encoding.UTF16)
    starts = []
    for i, char in enumerate(typed):
        doc.apply_change((line, character + i), (line, character + i), char, Encoding.UTF16, i + 2)
        context = build_context(doc, offset + i + 1, 600, TokenCounter(), others=[helper_doc])
        prompt = fim_prompt(context.prefix, context.suffix, context.snippets, doc.path)
        starts.append(prompt[: prompt.rindex("\n", 0, prompt.index(FIM_MIDDLE))])
    return starts


def test_prompt_start_is_stable_while_typing_a_line():
    # Everything before the line being typed is byte-identical from one keystroke to the next.
    assert len(set(prompt_starts("total = len(items) + 1"))) == 1


def test_prompt_start_changes_only_when_a_known_name_is_completed():
    starts = prompt_starts("helper.run()")
    changes = [i for i in range(1, len(starts)) if starts[i] != starts[i - 1]]
    # `run` (a method of Helper in the other open file) becomes a definition snippet once typed.
    assert changes == ["helper.run(".index("(")]


def test_token_counter_caches_and_falls_back_on_errors():
    calls = []

    def counting(text: str) -> int:
        calls.append(text)
        if text == "boom":
            raise RuntimeError("tokenizer failed")
        return len(text.split())

    count = TokenCounter(counting, max_entries=2)
    assert count("a b c") == 3 and count("a b c") == 3
    assert calls == ["a b c"]
    assert count("boom") == estimate_tokens("boom")
    count("x")
    count("y")
    assert len(count) <= 2


def test_the_device_cap_is_the_longest_measured_prefill_that_fits():
    measured = {1024: 300.0, 512: 120.0, 256: 50.0}
    assert prefill_cap(measured, 80) == 256
    assert prefill_cap(measured, 120) == 512
    assert prefill_cap(measured, 10) == 256  # nothing fits: the shortest length measured
    assert prefill_cap(measured, 500) is None  # the whole budget fits: no cap
    assert prefill_cap({1024: 40.0}, 80) is None
    assert prefill_cap(measured, 0) is None and prefill_cap(None, 80) is None and prefill_cap({}, 80) is None
