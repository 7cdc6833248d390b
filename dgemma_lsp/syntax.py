"""Tree-sitter languages, incremental parsing and the structural queries the server needs.

Grammars come from the per-language wheels (tree-sitter-python, ...), which bundle compiled
parsers, so nothing is downloaded at run time. Documents in other languages are plain text:
every function here accepts `tree=None` and then answers from the text alone.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache

import tree_sitter as ts


@dataclass(frozen=True)
class LanguageSpec:
    """What the server needs to know about one language's grammar."""

    name: str
    module: str
    entry: str = "language"
    functions: frozenset[str] = frozenset()
    classes: frozenset[str] = frozenset()
    imports: frozenset[str] = frozenset()
    blocks: frozenset[str] = frozenset()
    comments: frozenset[str] = frozenset({"comment"})
    strings: frozenset[str] = frozenset()
    identifiers: frozenset[str] = frozenset({"identifier"})
    # Top-level declarations besides functions and classes (constants, type aliases).
    declarations: frozenset[str] = frozenset()
    block_opener: str = "{"
    line_comment: str = "//"
    extensions: tuple[str, ...] = field(default_factory=tuple)


_C_FAMILY_STRINGS = frozenset({"string_literal", "char_literal", "raw_string_literal", "concatenated_string"})
_JS_FUNCTIONS = frozenset(
    {
        "function_declaration",
        "function_expression",
        "function",
        "generator_function_declaration",
        "arrow_function",
        "method_definition",
    }
)
_JS_STRINGS = frozenset({"string", "template_string", "regex"})
_JS_IDENTIFIERS = frozenset(
    {"identifier", "property_identifier", "type_identifier", "shorthand_property_identifier"}
)

SPECS: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec(
            name="python",
            module="tree_sitter_python",
            functions=frozenset({"function_definition"}),
            classes=frozenset({"class_definition"}),
            imports=frozenset({"import_statement", "import_from_statement", "future_import_statement"}),
            blocks=frozenset({"block"}),
            strings=frozenset({"string", "concatenated_string"}),
            declarations=frozenset({"expression_statement"}),
            block_opener=":",
            line_comment="#",
            extensions=(".py", ".pyi", ".pyw"),
        ),
        LanguageSpec(
            name="javascript",
            module="tree_sitter_javascript",
            functions=_JS_FUNCTIONS,
            classes=frozenset({"class_declaration", "class"}),
            imports=frozenset({"import_statement"}),
            blocks=frozenset({"statement_block", "class_body"}),
            strings=_JS_STRINGS,
            identifiers=_JS_IDENTIFIERS,
            declarations=frozenset({"lexical_declaration", "variable_declaration"}),
            extensions=(".js", ".mjs", ".cjs", ".jsx"),
        ),
        LanguageSpec(
            name="typescript",
            module="tree_sitter_typescript",
            entry="language_typescript",
            functions=_JS_FUNCTIONS | {"function_signature", "method_signature"},
            classes=frozenset(
                {
                    "class_declaration",
                    "class",
                    "abstract_class_declaration",
                    "interface_declaration",
                    "enum_declaration",
                }
            ),
            imports=frozenset({"import_statement"}),
            blocks=frozenset({"statement_block", "class_body", "interface_body", "enum_body"}),
            strings=_JS_STRINGS,
            identifiers=_JS_IDENTIFIERS,
            declarations=frozenset({"lexical_declaration", "variable_declaration", "type_alias_declaration"}),
            extensions=(".ts", ".mts", ".cts"),
        ),
        LanguageSpec(
            name="typescriptreact",
            module="tree_sitter_typescript",
            entry="language_tsx",
            functions=_JS_FUNCTIONS | {"function_signature", "method_signature"},
            classes=frozenset(
                {
                    "class_declaration",
                    "class",
                    "abstract_class_declaration",
                    "interface_declaration",
                    "enum_declaration",
                }
            ),
            imports=frozenset({"import_statement"}),
            blocks=frozenset({"statement_block", "class_body", "interface_body", "enum_body"}),
            strings=_JS_STRINGS,
            identifiers=_JS_IDENTIFIERS,
            declarations=frozenset({"lexical_declaration", "variable_declaration", "type_alias_declaration"}),
            extensions=(".tsx",),
        ),
        LanguageSpec(
            name="go",
            module="tree_sitter_go",
            functions=frozenset({"function_declaration", "method_declaration", "func_literal"}),
            classes=frozenset({"type_declaration"}),
            imports=frozenset({"import_declaration", "package_clause"}),
            blocks=frozenset({"block"}),
            strings=frozenset({"interpreted_string_literal", "raw_string_literal", "rune_literal"}),
            identifiers=frozenset(
                {"identifier", "type_identifier", "field_identifier", "package_identifier"}
            ),
            declarations=frozenset({"const_declaration", "var_declaration"}),
            extensions=(".go",),
        ),
        LanguageSpec(
            name="rust",
            module="tree_sitter_rust",
            functions=frozenset({"function_item", "function_signature_item", "closure_expression"}),
            classes=frozenset(
                {"impl_item", "trait_item", "struct_item", "enum_item", "mod_item", "union_item"}
            ),
            imports=frozenset({"use_declaration", "extern_crate_declaration"}),
            blocks=frozenset({"block", "declaration_list", "field_declaration_list"}),
            comments=frozenset({"line_comment", "block_comment"}),
            strings=frozenset({"string_literal", "raw_string_literal", "char_literal"}),
            identifiers=frozenset({"identifier", "type_identifier", "field_identifier"}),
            declarations=frozenset({"const_item", "static_item", "type_item"}),
            extensions=(".rs",),
        ),
        LanguageSpec(
            name="c",
            module="tree_sitter_c",
            functions=frozenset({"function_definition"}),
            classes=frozenset({"struct_specifier", "union_specifier", "enum_specifier"}),
            imports=frozenset({"preproc_include"}),
            blocks=frozenset({"compound_statement", "field_declaration_list"}),
            strings=_C_FAMILY_STRINGS | {"system_lib_string"},
            identifiers=frozenset({"identifier", "type_identifier", "field_identifier"}),
            declarations=frozenset({"type_definition", "preproc_def", "preproc_function_def", "declaration"}),
            extensions=(".c", ".h"),
        ),
        LanguageSpec(
            name="cpp",
            module="tree_sitter_cpp",
            functions=frozenset({"function_definition", "lambda_expression"}),
            classes=frozenset(
                {
                    "class_specifier",
                    "struct_specifier",
                    "union_specifier",
                    "enum_specifier",
                    "namespace_definition",
                }
            ),
            imports=frozenset({"preproc_include", "using_declaration"}),
            blocks=frozenset({"compound_statement", "field_declaration_list", "declaration_list"}),
            strings=_C_FAMILY_STRINGS | {"system_lib_string"},
            identifiers=frozenset(
                {"identifier", "type_identifier", "field_identifier", "namespace_identifier"}
            ),
            declarations=frozenset(
                {"type_definition", "alias_declaration", "preproc_def", "template_declaration"}
            ),
            extensions=(".cc", ".cpp", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++", ".ipp"),
        ),
        LanguageSpec(
            name="java",
            module="tree_sitter_java",
            functions=frozenset({"method_declaration", "constructor_declaration", "lambda_expression"}),
            classes=frozenset(
                {"class_declaration", "interface_declaration", "enum_declaration", "record_declaration"}
            ),
            imports=frozenset({"import_declaration", "package_declaration"}),
            blocks=frozenset({"block", "class_body", "interface_body", "enum_body", "constructor_body"}),
            comments=frozenset({"line_comment", "block_comment"}),
            strings=frozenset({"string_literal", "character_literal", "text_block"}),
            identifiers=frozenset({"identifier", "type_identifier"}),
            declarations=frozenset({"field_declaration"}),
            extensions=(".java",),
        ),
    )
}

# LSP language identifiers (and common editor aliases) -> grammar name.
LANGUAGE_ALIASES = {
    "python": "python",
    "python3": "python",
    "py": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",
    "js": "javascript",
    "jsx": "javascript",
    "typescript": "typescript",
    "ts": "typescript",
    "typescriptreact": "typescriptreact",
    "tsx": "typescriptreact",
    "go": "go",
    "golang": "go",
    "rust": "rust",
    "rs": "rust",
    "c": "c",
    "cpp": "cpp",
    "c++": "cpp",
    "cuda-cpp": "cpp",
    "objective-cpp": "cpp",
    "java": "java",
}


def grammar_for(language_id: str | None, path: str | None = None) -> str | None:
    """The grammar for an LSP language id, falling back on the file extension; None = plain text."""
    if language_id:
        name = LANGUAGE_ALIASES.get(language_id.lower())
        if name:
            return name
    if path:
        lowered = path.lower()
        for spec in SPECS.values():
            if any(lowered.endswith(ext) for ext in spec.extensions):
                return spec.name
    return None


@cache
def get_language(name: str) -> ts.Language:
    spec = SPECS[name]
    module = importlib.import_module(spec.module)
    return ts.Language(getattr(module, spec.entry)())


_local = threading.local()


def parser_for(name: str) -> ts.Parser:
    """A parser for the grammar, one per thread (tree-sitter parsers are not thread-safe)."""
    parsers = getattr(_local, "parsers", None)
    if parsers is None:
        parsers = _local.parsers = {}
    parser = parsers.get(name)
    if parser is None:
        parser = parsers[name] = ts.Parser(get_language(name))
    return parser


def parse(name: str, source: bytes, old_tree: ts.Tree | None = None) -> ts.Tree:
    return parser_for(name).parse(source, old_tree) if old_tree else parser_for(name).parse(source)


def encode(text: str) -> bytes:
    """The utf-8 bytes tree-sitter parses (lone surrogates kept so lengths stay consistent)."""
    return text.encode("utf-8", "surrogatepass")


class SyntaxTree:
    """A document's tree, edited on every change and re-parsed incrementally when asked for."""

    def __init__(self, grammar: str, text: str):
        self.grammar = grammar
        self.spec = SPECS[grammar]
        self._source = encode(text)
        self._tree: ts.Tree | None = None
        self._stale = True

    @property
    def source(self) -> bytes:
        return self._source

    def edit(
        self,
        new_text: str,
        start_byte: int,
        old_end_byte: int,
        new_end_byte: int,
        start_point: tuple[int, int],
        old_end_point: tuple[int, int],
        new_end_point: tuple[int, int],
    ) -> None:
        if self._tree is not None:
            self._tree.edit(
                start_byte=start_byte,
                old_end_byte=old_end_byte,
                new_end_byte=new_end_byte,
                start_point=start_point,
                old_end_point=old_end_point,
                new_end_point=new_end_point,
            )
        self._source = encode(new_text)
        self._stale = True

    def reset(self, text: str) -> None:
        self._source = encode(text)
        self._tree = None
        self._stale = True

    @property
    def tree(self) -> ts.Tree:
        if self._stale or self._tree is None:
            self._tree = parse(self.grammar, self._source, self._tree)
            self._stale = False
        return self._tree


# --- queries -------------------------------------------------------------------------------


def walk(node: ts.Node) -> Iterator[ts.Node]:
    """All nodes under `node`, depth first, in document order."""
    cursor = node.walk()
    while True:
        yield cursor.node
        if cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return


def error_nodes(tree: ts.Tree | ts.Node) -> Iterator[ts.Node]:
    """ERROR and MISSING nodes in the tree (only subtrees that contain errors are visited)."""
    root = tree.root_node if isinstance(tree, ts.Tree) else tree
    stack = [root] if root.has_error else []
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            yield node
        stack.extend(child for child in node.children if child.has_error or child.is_missing)


def error_count(tree: ts.Tree | ts.Node) -> int:
    """ERROR and MISSING nodes in the tree."""
    return sum(1 for _ in error_nodes(tree))


def text_error_count(grammar: str, text: str) -> int:
    return error_count(parse(grammar, encode(text)))


def errors_near_row(grammar: str, text: str, row: int) -> tuple[int, bool]:
    """(error count, whether an ERROR or MISSING node touches line `row`) of `text`."""
    errors = list(error_nodes(parse(grammar, encode(text))))
    return len(errors), any(node.start_point[0] <= row <= node.end_point[0] for node in errors)


def node_at(tree: ts.Tree, byte: int) -> ts.Node:
    """The smallest node that touches `byte` (the one ending there when the cursor is at its end)."""
    root = tree.root_node
    if byte > 0:
        node = root.descendant_for_byte_range(byte - 1, byte)
        if node is not None:
            return node
    node = root.descendant_for_byte_range(byte, byte)
    return node if node is not None else root


def enclosing(tree: ts.Tree, byte: int, kinds: frozenset[str]) -> list[ts.Node]:
    """Nodes of the given kinds that contain `byte`, outermost first."""
    node: ts.Node | None = tree.root_node.descendant_for_byte_range(byte, byte)
    chain = []
    while node is not None:
        if node.type in kinds and node.start_byte < byte <= node.end_byte:
            chain.append(node)
        node = node.parent
    chain.reverse()
    return chain


def body_of(node: ts.Node) -> ts.Node | None:
    """The body block of a function or class node."""
    body = node.child_by_field_name("body")
    if body is not None:
        return body
    for child in node.children:
        if child.type in {"block", "statement_block", "compound_statement", "class_body", "declaration_list"}:
            return child
    return None


def name_of(node: ts.Node) -> str | None:
    """The declared name of a function, class or declaration node, if it has one."""
    name = node.child_by_field_name("name")
    if name is None:
        declarator = node.child_by_field_name("declarator")
        while declarator is not None and name is None:
            if declarator.type in {
                "identifier",
                "field_identifier",
                "type_identifier",
                "qualified_identifier",
            }:
                name = declarator
                break
            name = declarator.child_by_field_name("name")
            declarator = declarator.child_by_field_name("declarator")
    if name is None and node.type == "type_declaration":
        for child in node.named_children:
            if child.type == "type_spec":
                name = child.child_by_field_name("name")
                break
    if name is None and node.type in {"lexical_declaration", "variable_declaration"}:
        for child in node.named_children:
            if child.type == "variable_declarator":
                name = child.child_by_field_name("name")
                break
    if name is None and node.type == "expression_statement":
        assignment = node.named_children[0] if node.named_children else None
        if assignment is not None and assignment.type == "assignment":
            left = assignment.child_by_field_name("left")
            if left is not None and left.type == "identifier":
                name = left
    if name is None and node.type == "template_declaration":
        for child in node.named_children:
            if child.type in {"function_definition", "class_specifier", "struct_specifier"}:
                return name_of(child)
    if name is None:
        return None
    text = name.text
    return text.decode("utf-8", "replace") if text is not None else None


def signature(node: ts.Node, source: bytes) -> str:
    """The header of a function or class: its text up to the body, without the body."""
    body = body_of(node)
    end = body.start_byte if body is not None else node.end_byte
    start = node.start_byte
    # Keep decorators / the line's indentation out; keep the opener on the header line.
    header = source[start:end].decode("utf-8", "replace").rstrip()
    if body is not None and source[body.start_byte : body.start_byte + 1] == b"{":
        header += " {"
    return header


def identifiers_in(tree: ts.Tree, spec: LanguageSpec, start: int, end: int) -> list[tuple[str, int, int]]:
    """(name, start_byte, end_byte) of identifier nodes inside [start, end)."""
    found = []
    node = tree.root_node.descendant_for_byte_range(start, max(start, end - 1))
    if node is None:
        return found
    # Climb until the node spans the whole range.
    while node.parent is not None and (node.start_byte > start or node.end_byte < end):
        node = node.parent
    for child in walk(node):
        if child.end_byte <= start or child.start_byte >= end:
            continue
        if child.type in spec.identifiers and child.child_count == 0:
            text = child.text
            if text:
                found.append((text.decode("utf-8", "replace"), child.start_byte, child.end_byte))
    return found


def top_level_definitions(tree: ts.Tree, spec: LanguageSpec) -> dict[str, ts.Node]:
    """Functions, classes and declarations at the top of the file and one level into classes."""
    definitions: dict[str, ts.Node] = {}
    kinds = spec.functions | spec.classes | spec.declarations

    def visit(parent: ts.Node, depth: int) -> None:
        for child in parent.named_children:
            target = child
            if child.type in {"decorated_definition", "export_statement"}:
                inner = child.child_by_field_name("definition") or child.child_by_field_name("declaration")
                if inner is None and child.named_children:
                    inner = child.named_children[-1]
                target = inner or child
            if target.type in kinds:
                name = name_of(target)
                if name and name not in definitions and (depth == 0 or target.type not in spec.declarations):
                    definitions[name] = child
                if target.type in {"namespace_definition", "mod_item"}:
                    body = body_of(target)
                    if body is not None:
                        visit(body, depth)  # a namespace is not a nesting level
                elif depth == 0 and target.type in spec.classes:
                    body = body_of(target)
                    if body is not None:
                        visit(body, depth + 1)
            elif child.type in {"namespace_definition", "declaration_list", "statement_list"} and depth == 0:
                visit(child, depth)

    visit(tree.root_node, 0)
    return definitions


def import_nodes(tree: ts.Tree, spec: LanguageSpec) -> list[ts.Node]:
    """Import statements at the top level of the file."""
    return [child for child in tree.root_node.named_children if child.type in spec.imports]


def is_in_comment_or_string(tree: ts.Tree, spec: LanguageSpec, byte: int) -> str | None:
    """'comment' or 'string' when the cursor sits inside one (not just after its end)."""
    node: ts.Node | None = tree.root_node.descendant_for_byte_range(byte, byte)
    while node is not None:
        if node.start_byte < byte:
            if node.type in spec.comments and (byte < node.end_byte or _is_line_comment(node)):
                return "comment"
            if node.type in spec.strings and byte < node.end_byte:
                return "string"
        node = node.parent
    if byte > 0:
        # A line comment that runs to the end of the line ends exactly at the cursor.
        node = tree.root_node.descendant_for_byte_range(byte - 1, byte)
        while node is not None:
            if node.type in spec.comments and node.end_byte == byte and _is_line_comment(node):
                return "comment"
            node = node.parent
    return None


def _is_line_comment(node: ts.Node) -> bool:
    text = node.text or b""
    return not text.startswith(b"/*")
