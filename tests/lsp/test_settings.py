"""Settings: one validated model; camelCase or snake_case; invalid values fall back with a message."""

from __future__ import annotations

from dgemma_lsp.settings import Settings, parse_settings


def test_defaults():
    settings, problems = parse_settings(None)
    assert settings == Settings() and problems == []
    assert settings.backend == "engine" and settings.model is None and settings.enabled_languages == ["*"]


def test_nested_or_flat_camel_or_snake():
    a, _ = parse_settings(
        {"dgemma": {"maxLines": 3, "deadlineMs": 900, "enabledLanguages": ["Python", "go"]}}
    )
    b, _ = parse_settings({"max_lines": 3, "deadline_ms": 900, "enabled_languages": ["python", "go"]})
    assert a == b
    assert a.max_lines == 3 and a.language_enabled("python") and not a.language_enabled("rust")


def test_later_payloads_win_over_earlier_ones():
    settings, _ = parse_settings({"steps": 4, "device": "cpu"}, {"dgemma": {"steps": 8}})
    assert settings.steps == 8 and settings.device == "cpu"


def test_invalid_values_fall_back_to_defaults_with_a_message_each():
    settings, problems = parse_settings(
        {"maxLines": -3, "device": "tpu", "dtype": "int3", "deadlineMs": "soon", "steps": 4, "colour": "red"}
    )
    assert settings.max_lines == 8 and settings.device == "auto" and settings.dtype == "auto"
    assert settings.deadline_ms == 1500 and settings.steps == 4
    text = "\n".join(problems)
    for name in ("maxLines", "device", "dtype", "deadlineMs", "colour"):
        assert name in text
    assert len(problems) == 5


def test_invalid_update_keeps_the_previous_value():
    base, _ = parse_settings({"maxLines": 5})
    settings, problems = parse_settings({"maxLines": 0}, base=base)
    assert settings.max_lines == 5 and problems


def test_not_an_object_is_reported_and_ignored():
    settings, problems = parse_settings(["model"])
    assert settings == Settings() and problems


def test_disabled_languages_win_and_backend_key_tracks_reload_fields():
    settings, _ = parse_settings({"disabledLanguages": ["markdown"]})
    assert not settings.language_enabled("markdown") and settings.language_enabled("python")
    other, _ = parse_settings({"steps": 2})
    assert other.backend_key() == settings.backend_key()
    moved, _ = parse_settings({"device": "cuda:1"})
    assert moved.backend_key() != settings.backend_key()
