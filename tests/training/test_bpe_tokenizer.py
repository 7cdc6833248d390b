"""The embedded model's tokenizer: special ids, <bos> post-processor, exact round trips."""

from __future__ import annotations

import pytest

from engine.prompting import FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, fim_prompt
from engine.training.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    encode_text,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

CODE = [
    "import os\n\n\ndef main(argv):\n    for arg in argv:\n        print(arg)\n    return 0\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "if __name__ == '__main__':\n    raise SystemExit(main(sys.argv))\n",
] * 20

ROUND_TRIPS = [
    "",
    "x",
    "def f():\n\treturn  1   \n",
    "a = 1\r\nb = 2\r\n",
    "    \n\n\n        \n",
    "s = 'héllo wörld — ∑ 漢字 🐍'\n",
    "trailing spaces   ",
    "\x00\x01 control\x7f bytes",
    "x = '<pa' + 'd>' if not '<bos' else '<|fim'\n",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CODE, vocab_size=400)


def test_special_tokens_take_ids_zero_to_seven_in_order(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(8))
    assert (PAD_ID, EOS_ID, BOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert SPECIAL_TOKENS[4:] == (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP)


def test_encode_prepends_bos_like_transformers(tokenizer):
    ids = tokenizer.encode("def f(): pass\n").ids
    assert ids[0] == BOS_ID
    assert BOS_ID not in encode_text(tokenizer, "def f(): pass\n")


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_decode_skipping_special_tokens_round_trips_code_exactly(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=True) == text


def test_fim_prompt_keeps_each_marker_as_one_special_token(tokenizer):
    prompt = fim_prompt("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n", path="m.py")
    ids = tokenizer.encode(prompt).ids
    for token in (FILE_SEP, FIM_SUFFIX, FIM_PREFIX, FIM_MIDDLE):
        assert ids.count(tokenizer.token_to_id(token)) == 1
    assert ids[-1] == tokenizer.token_to_id(FIM_MIDDLE)
    assert (
        tokenizer.decode(ids, skip_special_tokens=True) == "m.py\n\n\nprint(add(1, 2))\ndef add(a, b):\n    "
    )


def test_saved_tokenizer_json_keeps_post_processor_and_round_trip(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "for i in range(10):\n    total += i  # ∑\n"
    assert loaded.encode(text).ids == tokenizer.encode(text).ids
    assert loaded.encode(text).ids[0] == BOS_ID
    assert loaded.decode(loaded.encode(text).ids, skip_special_tokens=True) == text
    assert (tmp_path / "tokenizer_config.json").is_file()


def test_learned_merges_compress_code(tokenizer):
    text = CODE[0]
    assert len(encode_text(tokenizer, text)) < len(text.encode("utf-8")) / 2
