"""The embedded model's tokenizer: byte-level BPE trained on code with `tokenizers`.

Special tokens take the first ids, in DiffusionGemma's order for the shared ones (diffusiongemma.md
5.1: pad 0, eos 1, bos 2, unk 3), then the fill-in-the-middle tokens of `engine.prompting`. The
saved `tokenizer.json` prepends `<bos>` through its post-processor, as transformers' tokenizers do,
and decodes with `skip_special_tokens=True` back to the exact input text (byte level, no
normaliser, no prefix space).

Pre-tokenisation is GPT-2's byte-level regex, which keeps a newline together with the following
indentation, so BPE learns tokens such as "\\n        " that make Python lines short in tokens.

The special tokens are recognised inside any text (the engine builds the FIM prompt as a string),
so source code that literally contains `<pad>` or `<|fim_prefix|>` is read as those tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from engine.prompting import FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP)
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
DEFAULT_VOCAB_SIZE = 8192


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline with the post-processor and decoder set."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def add_bos_post_processor(tokenizer: Tokenizer) -> None:
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train on `texts` (whole files). Ids 0..7 are `SPECIAL_TOKENS` in that order."""
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    check_special_ids(tokenizer)
    add_bos_post_processor(tokenizer)
    return tokenizer


def check_special_ids(tokenizer: Tokenizer) -> None:
    for expected, token in enumerate(SPECIAL_TOKENS):
        actual = tokenizer.token_to_id(token)
        if actual != expected:
            raise ValueError(f"special token {token!r} has id {actual}, expected {expected}")


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    return {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}


def save_tokenizer(tokenizer: Tokenizer, folder: str | Path) -> Path:
    """Write `tokenizer.json` plus a small `tokenizer_config.json` for transformers users."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "additional_special_tokens": [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP],
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a `tokenizer.json` (or the one inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    return Tokenizer.from_file(str(path))


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of `text` without `<bos>` (canvas targets, clipped windows)."""
    return tokenizer.encode(text, add_special_tokens=False).ids
