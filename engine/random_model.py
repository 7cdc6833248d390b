"""Random DiffusionGemma checkpoints of any size, in the real file layout.

Used by the tests (tiny models that load in milliseconds), by `dgemma bench` (a small model of
chosen shape, and the real 26B-A4B shapes on a GPU) and as the starting point of training.
A checkpoint written here is indistinguishable in layout from one saved by transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from engine.config import FULL, SLIDING, ModelConfig, TextConfig
from engine.loading import save_checkpoint
from engine.model import DiffusionGemmaTransformer
from engine.prompting import FIM_TOKENS
from engine.sampler import SamplerConfig

BASE_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHAT_TOKENS = ["<|turn>", "<turn|>"]
# A Gemma-style template: <bos><|turn>role\ncontent<turn|>\n ... <|turn>model\n
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ message['content'] | trim }}<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

SAMPLE_CODE = '''
import os
import sys
from collections import defaultdict


def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value


def read_lines(path):
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield line.rstrip("\\n")


for index, item in enumerate(["alpha", "beta", "gamma"]):
    print(index, item)

function add(a, b) { return a + b; }
const values = [1, 2, 3].map((x) => x * 2);
fn main() { println!("hello {}", 42); }
func Sum(xs []int) int { total := 0; for _, x := range xs { total += x }; return total }
int main(void) { return 0; }
'''


def tiny_text_config(**overrides: Any) -> TextConfig:
    """diffusiongemma.md 8.1: every structural feature on, at toy sizes."""
    values: dict[str, Any] = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=24,
        num_hidden_layers=6,
        layer_types=[SLIDING] * 5 + [FULL],
        sliding_window=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        num_global_key_value_heads=1,
        num_experts=8,
        top_k_experts=2,
        max_position_embeddings=4096,
        eos_token_id=[1, 106],
    )
    values.update(overrides)
    return TextConfig(**values)


def train_tokenizer(
    vocab_size: int, corpus: list[str] | None = None, fim_tokens: bool = True, chat_tokens: bool = True
) -> HFTokenizer:
    """A byte-level BPE with <pad>=0, <eos>=1, <bos>=2, <unk>=3 and a <bos>-adding post-processor."""
    specials = (
        list(BASE_SPECIAL_TOKENS)
        + (list(FIM_TOKENS) if fim_tokens else [])
        + (CHAT_TOKENS if chat_tokens else [])
    )
    tokenizer = HFTokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus or [SAMPLE_CODE] * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)]
    )
    return tokenizer


def write_tokenizer(folder: Path, tokenizer: HFTokenizer, chat_template: str | None = CHAT_TEMPLATE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    # An explicit class: transformers' AutoTokenizer would otherwise pick the Gemma tokenizer from
    # config.json's model type and rebuild a SentencePiece-style pipeline over this byte-level BPE.
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if chat_template:
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def randomize_vectors(
    model: torch.nn.Module, scale: float = 0.3, generator: torch.Generator | None = None
) -> None:
    """1 + scale * N(0, 1) for every 1-D parameter (diffusiongemma.md 8.1: defaults would hide mistakes)."""
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.copy_(1 + scale * torch.randn(param.shape, generator=generator))


def write_random_checkpoint(
    folder: str | Path,
    text_config: TextConfig | None = None,
    canvas_length: int = 16,
    seed: int = 0,
    fim_tokens: bool = True,
    eos_ids: list[int] | None = None,
    sampler: SamplerConfig | None = None,
    std: float = 0.02,
) -> Path:
    """A random model with its tokenizer, saved in the real layout; returns the folder."""
    folder = Path(folder)
    text = text_config or tiny_text_config()
    tokenizer = train_tokenizer(min(text.vocab_size, 4096), fim_tokens=fim_tokens)
    turn_end = tokenizer.token_to_id("<turn|>")
    eos = eos_ids or [1] + ([turn_end] if turn_end is not None else [])
    text.eos_token_id = list(eos)
    generator = torch.Generator().manual_seed(seed)
    model = DiffusionGemmaTransformer(text)
    model.init_weights(std=std, generator=generator)
    randomize_vectors(model, generator=generator)
    config = ModelConfig(text=text, canvas_length=canvas_length, eos_token_id=list(eos))
    write_tokenizer(folder, tokenizer)
    save_checkpoint(model, config, folder, sampler=sampler)
    return folder
