"""Tree-sitter grammars for every supported language, and the structural queries on real code."""

from __future__ import annotations

import pytest

from dgemma_lsp import syntax

SAMPLES = {
    "python": (
        "import os\nfrom typing import List\n\n\nclass Shape:\n    def area(self) -> float:\n"
        "        return self.width * self.height\n\n\ndef total(shapes: List[Shape]) -> float:\n"
        "    return sum(s.area() for s in shapes)\n",
        {"Shape", "area", "total"},
        "return self.width",
        ["class Shape:", "def area(self) -> float:"],
    ),
    "javascript": (
        "import fs from 'fs';\n\nclass Shape {\n  area() {\n    return this.w * this.h;\n  }\n}\n\n"
        "function total(shapes) {\n  return shapes.reduce((a, s) => a + s.area(), 0);\n}\n",
        {"Shape", "area", "total"},
        "return shapes",
        ["function total(shapes) {"],
    ),
    "typescript": (
        "import { readFileSync } from 'fs';\n\ninterface Sized { w: number; h: number }\n\n"
        "export function total(shapes: Sized[]): number {\n  return shapes.length;\n}\n",
        {"Sized", "total"},
        "return shapes",
        ["function total(shapes: Sized[]): number {"],
    ),
    "go": (
        'package main\n\nimport "fmt"\n\ntype Shape struct {\n\tW, H float64\n}\n\n'
        "func (s Shape) Area() float64 {\n\treturn s.W * s.H\n}\n\nfunc main() {\n\tfmt.Println(Shape{1, 2}.Area())\n}\n",
        {"Shape", "Area", "main"},
        "fmt.Println",
        ["func main() {"],
    ),
    "rust": (
        "use std::fmt;\n\nstruct Shape { w: f64, h: f64 }\n\nimpl Shape {\n    fn area(&self) -> f64 {\n"
        '        self.w * self.h\n    }\n}\n\nfn main() {\n    println!("{}", Shape { w: 1.0, h: 2.0 }.area());\n}\n',
        {"Shape", "area", "main"},
        "self.w * self.h",
        ["impl Shape {", "fn area(&self) -> f64 {"],
    ),
    "c": (
        "#include <stdio.h>\n\nstruct shape { double w, h; };\n\ndouble area(struct shape s) {\n"
        "    return s.w * s.h;\n}\n\nint main(void) {\n    return 0;\n}\n",
        {"shape", "area", "main"},
        "return s.w",
        ["double area(struct shape s) {"],
    ),
    "cpp": (
        "#include <vector>\n\nnamespace geo {\nclass Shape {\n public:\n  double area() const { return w * h; }\n"
        "  double w, h;\n};\n}\n\nint main() {\n  return 0;\n}\n",
        {"geo", "Shape", "area", "main"},
        "return w * h",
        ["namespace geo {", "class Shape {", "double area() const {"],
    ),
    "java": (
        "package demo;\n\nimport java.util.List;\n\nclass Shape {\n  double w, h;\n\n  double area() {\n"
        "    return w * h;\n  }\n}\n",
        {"Shape", "area"},
        "return w",
        ["class Shape {", "double area() {"],
    ),
}


@pytest.mark.parametrize("grammar", sorted(SAMPLES))
def test_grammar_loads_offline_and_parses_clean_code(grammar):
    source = syntax.encode(SAMPLES[grammar][0])
    tree = syntax.parse(grammar, source)
    assert syntax.error_count(tree) == 0, str(tree.root_node)


@pytest.mark.parametrize("grammar", sorted(SAMPLES))
def test_definitions_imports_and_scopes(grammar):
    text, names, anchor, scope_headers = SAMPLES[grammar]
    source = syntax.encode(text)
    tree = syntax.parse(grammar, source)
    spec = syntax.SPECS[grammar]
    assert names <= set(syntax.top_level_definitions(tree, spec))
    assert syntax.import_nodes(tree, spec), "imports found"
    byte = source.index(anchor.encode())
    chain = syntax.enclosing(tree, byte, spec.functions | spec.classes)
    headers = [syntax.signature(node, source).strip() for node in chain]
    assert [
        h.splitlines()[-1].strip() if h.startswith(("@", "export")) else h for h in headers
    ] == scope_headers


def test_errors_are_counted_and_located():
    tree = syntax.parse("python", b"def f(:\n    return )\n")
    assert syntax.error_count(tree) >= 1
    assert syntax.error_count(syntax.parse("python", b"x = 1\n")) == 0


def test_comment_and_string_detection():
    text = 'x = "abc"  # note\ny = 1\n'
    tree = syntax.parse("python", syntax.encode(text))
    spec = syntax.SPECS["python"]
    assert syntax.is_in_comment_or_string(tree, spec, text.index("bc")) == "string"
    assert (
        syntax.is_in_comment_or_string(tree, spec, text.index("note") + 4) == "comment"
    )  # end of a line comment
    assert syntax.is_in_comment_or_string(tree, spec, text.index("y")) is None
    assert (
        syntax.is_in_comment_or_string(tree, spec, text.index('"abc"') + 5) is None
    )  # just after the string


def test_identifiers_in_a_range():
    text = "def f(alpha, beta):\n    return alpha + gamma(beta)\n"
    tree = syntax.parse("python", syntax.encode(text))
    start = text.index("return")
    names = [name for name, _, _ in syntax.identifiers_in(tree, syntax.SPECS["python"], start, len(text))]
    assert names == ["alpha", "gamma", "beta"]


def test_language_aliases_and_extensions():
    assert syntax.grammar_for("typescriptreact") == "typescriptreact"
    assert syntax.grammar_for("javascriptreact") == "javascript"
    assert syntax.grammar_for("", "/x/y.hpp") == "cpp"
    assert syntax.grammar_for("markdown", "/x/README.md") is None


def test_errors_near_a_row():
    text = "def f():\n    value = 1 2\n    return value\n"
    count, on_row = syntax.errors_near_row("python", text, 1)
    assert count == 1 and on_row
    assert syntax.errors_near_row("python", text, 2) == (1, False)
    assert syntax.errors_near_row("python", "x = 1\n", 0) == (0, False)
