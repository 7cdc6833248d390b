"""Typing-through cache: serve the rest of a suggestion while the user types what it predicted."""

from __future__ import annotations

from dgemma_lsp.cache import TypingCache

BEFORE = "def area(r):\n    return "
AFTER = "\n\nprint(area(2))\n"


def test_typing_the_predicted_characters_serves_the_rest():
    cache = TypingCache()
    cache.put("u", BEFORE, AFTER, "3.14159 * r * r")
    for typed in ["3", "3.", "3.14", "3.14159 * r"]:
        hit = cache.get("u", BEFORE + typed, AFTER)
        assert hit is not None and hit.text == "3.14159 * r * r"[len(typed) :]
    assert cache.hits == 4


def test_exact_repeat_hits_including_no_suggestion_answers():
    cache = TypingCache()
    cache.put("u", BEFORE, AFTER, None)
    hit = cache.get("u", BEFORE, AFTER)
    assert hit is not None and hit.text is None


def test_diverging_typing_deleting_or_a_changed_suffix_misses():
    cache = TypingCache()
    cache.put("u", BEFORE, AFTER, "3.14159 * r * r")
    assert cache.get("u", BEFORE + "2", AFTER) is None  # typed something else
    assert cache.get("u", BEFORE[:-1], AFTER) is None  # deleted a character
    assert cache.get("u", BEFORE + "3", AFTER + "x") is None  # the text after the cursor changed
    assert cache.get("other", BEFORE + "3", AFTER) is None  # another document
    assert cache.get("u", BEFORE + "3.14159 * r * r", AFTER) is None  # typed it all: nothing left


def test_auto_closed_replacement_length_is_kept():
    cache = TypingCache()
    cache.put("u", "print(", ")\n", "'hi')", replace_after=1)
    hit = cache.get("u", "print('h", ")\n")
    assert hit is not None and hit.text == "i')" and hit.replace_after == 1


def test_memory_is_bounded_by_entries_per_document_and_characters():
    cache = TypingCache(max_entries=10, max_chars=5_000, per_document=3)
    for i in range(1000):
        cache.put(f"doc{i % 7}", "x" * (i % 50) + str(i), "y", "z")
        assert len(cache) <= 10 and cache.chars <= 5_000
    for i in range(7):
        cache.forget(f"doc{i}")
    assert len(cache) == 0 and cache.chars == 0
