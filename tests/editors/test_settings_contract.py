"""The editor integrations name the server's settings and languages exactly as the server does:
VS Code's contributed settings mirror dgemma_lsp.settings.Settings (names, types, defaults,
ranges), the Helix config is accepted without a warning, and every language the integrations
attach to has a grammar in the server."""

from __future__ import annotations

import json
import re
import typing

import pytest
from pydantic.alias_generators import to_camel

from dgemma_lsp import syntax
from dgemma_lsp.settings import Settings, parse_settings
from tests.editors.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

EDITORS = REPO / "editors"
PACKAGE = json.loads((EDITORS / "vscode" / "package.json").read_text())
PROPERTIES = PACKAGE["contributes"]["configuration"]["properties"]
CLIENT_ONLY = ("dgemma.server.", "dgemma.statusBar.", "dgemma.trace.")


def server_properties() -> dict[str, dict]:
    return {k: v for k, v in PROPERTIES.items() if not k.startswith(CLIENT_ONLY)}


def test_vscode_contributes_every_server_setting_and_no_other():
    fields = {f"dgemma.{to_camel(name)}" for name in Settings.model_fields}
    assert set(server_properties()) == fields


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_vscode_setting_matches_the_server(name):
    field = Settings.model_fields[name]
    prop = PROPERTIES[f"dgemma.{to_camel(name)}"]
    default = field.get_default(call_default_factory=True)
    args = typing.get_args(field.annotation)
    if typing.get_origin(field.annotation) is typing.Literal:
        assert prop["type"] == "string" and prop["enum"] == list(args)
    elif type(None) in args:  # optional: empty string / null means "unset"
        inner = next(a for a in args if a is not type(None))
        assert prop["type"] == ("string" if inner is str else ["integer", "null"])
        assert prop["default"] == ("" if inner is str else None)
        default = prop["default"]
    else:
        expected = {bool: "boolean", int: "integer", str: "string"}.get(field.annotation, "array")
        assert prop["type"] == expected
    assert prop["default"] == default
    for meta in field.metadata:
        if getattr(meta, "ge", None) is not None:
            assert prop["minimum"] == meta.ge
        if getattr(meta, "le", None) is not None:
            assert prop["maximum"] == meta.le
    # Every contributed default is a value the server accepts without a complaint.
    _, problems = parse_settings({"dgemma": {to_camel(name): prop["default"]}})
    assert problems == []


def test_vscode_extension_only_settings_are_outside_the_server_section():
    extension_only = [k for k in PROPERTIES if k.startswith(CLIENT_ONLY)]
    assert sorted(extension_only) == sorted(
        [
            "dgemma.server.command",
            "dgemma.server.pythonPath",
            "dgemma.server.args",
            "dgemma.server.logLevel",
            "dgemma.server.install.python",
            "dgemma.server.install.pipArgs",
            "dgemma.statusBar.slowMs",
            "dgemma.trace.server",
        ]
    )
    logic = (EDITORS / "vscode" / "src" / "logic.ts").read_text()
    assert "CLIENT_ONLY_KEYS = ['server', 'statusBar', 'trace']" in logic


def test_helix_config_is_accepted_by_the_server():
    config = tomllib.loads((EDITORS / "helix" / "languages.toml").read_text())
    server = config["language-server"]["dgemma"]
    assert server["command"] == "dgemma-lsp"
    settings, problems = parse_settings(server["config"])
    assert problems == []
    assert settings == Settings(**{k: v for k, v in server["config"]["dgemma"].items()})
    languages = {entry["name"] for entry in config["language"] if "dgemma" in entry["language-servers"]}
    assert languages == {"python", "javascript", "typescript", "jsx", "tsx", "go", "rust", "c", "cpp", "java"}


def lua_list(source: str, name: str) -> list[str]:
    block = re.search(name + r"\s*=\s*\{(.*?)\}", source, re.S)
    assert block, name
    return re.findall(r"'([^']+)'", block.group(1))


def test_every_language_the_integrations_attach_to_has_a_grammar():
    neovim = lua_list((EDITORS / "neovim" / "lua" / "dgemma" / "init.lua").read_text(), "M.filetypes")
    vscode = [e.removeprefix("onLanguage:") for e in PACKAGE["activationEvents"]]
    extension = re.search(
        r"LANGUAGES = \[(.*?)\]", (EDITORS / "vscode" / "src" / "extension.ts").read_text(), re.S
    )
    assert extension
    assert re.findall(r"'([^']+)'", extension.group(1)) == vscode
    assert neovim == vscode
    for language in vscode:
        assert syntax.grammar_for(language) is not None, language
