"""The Python SDK on a tiny model: every call, the options that change memory, and bad input."""

from __future__ import annotations

import pytest
import torch

from engine import (
    ConfigError,
    ContextSnippet,
    DiffusionConfig,
    DiffusionGemmaModel,
    InfillRequest,
    OutOfMemoryError,
    PromptTooLongError,
)
from engine.random_model import tiny_text_config, write_random_checkpoint


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=0)
    )


def test_generate_returns_text_and_stats(model):
    result = model.run(model.request(prompt="def add(a, b):", max_tokens=40, num_diffusion_steps=3))
    assert isinstance(result.text, str)
    stats = result.stats
    assert stats.generated_tokens == 40 and stats.canvases == 3  # canvas 16: 16 + 16 + 8
    assert stats.steps_per_canvas == [3, 3, 3]
    assert stats.tokens_per_second > 0 and stats.finish_reason == "length"
    assert stats.prompt_tokens == len(model.tokenizer.encode("def add(a, b):"))


def test_raw_prompts_get_the_tokenizers_own_special_tokens(model):
    ids = model._prompt_ids("x = 1", add_special_tokens=True)
    assert ids[0] == 2 and ids.count(2) == 1  # <bos> from the post-processor, once


def test_stream_yields_canvas_by_canvas_and_matches_generate(model):
    chunks = list(model.generate_stream("import os", max_tokens=48, num_diffusion_steps=2, seed=5))
    assert len(chunks) >= 2
    assert "".join(chunks) == model.generate("import os", max_tokens=48, num_diffusion_steps=2, seed=5)


def test_same_seed_same_text_other_seed_other_text(model):
    a = model.generate("for i in", max_tokens=16, num_diffusion_steps=2, seed=1)
    b = model.generate("for i in", max_tokens=16, num_diffusion_steps=2, seed=1)
    c = model.generate("for i in", max_tokens=16, num_diffusion_steps=2, seed=2)
    assert a == b and a != c


def test_stop_strings_cut_the_text(model):
    text = model.generate("x", max_tokens=48, num_diffusion_steps=2, seed=3)
    assert len(text) > 4
    stop = text[2:4]
    result = model.run(model.request("x", max_tokens=48, num_diffusion_steps=2, seed=3, stop=[stop]))
    assert result.text == text[: text.find(stop)]
    assert result.stats.finish_reason == "stop"


def test_chat_renders_the_template_with_a_system_prompt_and_one_bos(model):
    messages = [{"role": "system", "content": "Answer in code."}, {"role": "user", "content": "sum a list"}]
    ids = model.chat_prompt_ids(messages)
    text = model.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith(
        "<bos><|turn>system\nAnswer in code.<turn|>\n<|turn>user\nsum a list<turn|>\n<|turn>model\n"
    )
    assert ids.count(2) == 1
    result = model.run(model.chat_request(messages, max_tokens=8, num_diffusion_steps=2))
    assert isinstance(result.text, str)
    assert result.stats.prompt_tokens == len(ids)


def test_malformed_chat_messages_get_a_clear_error(model):
    with pytest.raises(ConfigError, match="role"):
        model.chat(["hello"])


def test_infill_uses_native_fim_tokens_and_one_short_canvas(model):
    hole = InfillRequest("def f(x):\n    return ", "\n\nprint(f(2))\n", max_tokens=8, num_diffusion_steps=2)
    result = model.infill_request(hole)
    assert isinstance(result.text, str) and "<|fim" not in result.text
    assert result.stats.canvases == 1 and result.stats.generated_tokens <= 8
    request = InfillRequest(
        prefix="x = ",
        suffix="\n",
        snippets=[ContextSnippet("util.py", "def helper():\n    pass")],
        max_tokens=4,
    )
    result = model.infill_request(request)
    assert result.stats.prompt_tokens > model.count_tokens("x = ")


def test_infill_without_fim_tokens_goes_through_the_chat_template(tmp_path):
    folder = write_random_checkpoint(tmp_path / "nofim", fim_tokens=False)
    chat_model = DiffusionGemmaModel.from_pretrained(folder, config=DiffusionConfig(dtype="float32", seed=0))
    assert not chat_model.has_fim_tokens
    result = chat_model.infill_request(
        InfillRequest("def f():\n    ", "\n", max_tokens=8, num_diffusion_steps=2)
    )
    assert result.stats.prompt_tokens > 40  # the system prompt and the hole marker


def test_prompt_cache_reuse_gives_the_same_result_as_a_fresh_model(tiny_checkpoint):
    config = DiffusionConfig(dtype="float32", seed=4)
    warm = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=config)
    prefix = "class Stack:\n    def push(self, item):\n        self.items.append(item)\n"
    warm.generate(prefix, max_tokens=8, num_diffusion_steps=2)
    second = warm.run(warm.request(prefix + "    def pop(self):", max_tokens=20, num_diffusion_steps=3))
    assert second.stats.cached_prompt_tokens > 10
    cold = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=config)
    fresh = cold.run(cold.request(prefix + "    def pop(self):", max_tokens=20, num_diffusion_steps=3))
    assert fresh.text == second.text
    assert fresh.stats.cached_prompt_tokens == 0


def test_attention_slicing_changes_nothing_but_memory(tiny_checkpoint):
    plain = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=1)
    )
    sliced = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=1, attention_slicing=4)
    )
    assert all(layer.self_attn.slice_size == 4 for layer in sliced.transformer.layers)
    assert plain.generate("a = [", max_tokens=32, num_diffusion_steps=2) == sliced.generate(
        "a = [", max_tokens=32, num_diffusion_steps=2
    )


def test_cpu_offload_keeps_experts_on_the_cpu_and_fetches_only_routed_ones(tiny_checkpoint):
    plain = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=2)
    )
    offload = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=2, cpu_offload_unused_experts=True)
    )
    for layer in offload.transformer.layers:
        assert layer.experts.gate_up_proj.device.type == "cpu" and layer.experts.offload_device is not None
    routed: list[set[int]] = []
    hooks = [
        layer.router.register_forward_hook(lambda _m, _i, out: routed.append(set(out[1].unique().tolist())))
        for layer in offload.transformer.layers
    ]
    ids = torch.tensor([offload.tokenizer.encode("def f(x): return x")])
    canvas = torch.randint(0, 512, (1, 16))
    with torch.inference_mode():
        cache = offload.transformer.new_cache()
        offload.transformer.encode(ids, cache)
        routed.clear()
        logits = offload.transformer.denoise(canvas, cache)
        plain_cache = plain.transformer.new_cache()
        plain.transformer.encode(ids, plain_cache)
        assert torch.allclose(logits, plain.transformer.denoise(canvas, plain_cache), atol=1e-5)
    for hook in hooks:
        hook.remove()
    fetched = offload.transformer.experts_fetched()
    # Each layer copied exactly the experts its router chose for this pass, each once.
    assert [set(f) for f in fetched] == routed
    assert all(len(f) == len(set(f)) for f in fetched)
    assert any(len(f) < 8 for f in fetched) or all(len(r) == 8 for r in routed)


def test_bfloat16_runs_on_the_cpu(tiny_checkpoint):
    model = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="bfloat16", seed=0)
    )
    assert model.transformer.dtype == torch.bfloat16
    assert isinstance(model.generate("x = ", max_tokens=16, num_diffusion_steps=2), str)


def test_nvfp4_needs_expert_dimensions_in_blocks_of_16(tiny_checkpoint):
    with pytest.raises(ConfigError, match="blocks of 16"):
        DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=DiffusionConfig(dtype="nvfp4"))


def test_nvfp4_quantises_experts_of_a_bf16_checkpoint_while_loading(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny_text_config(moe_intermediate_size=32))
    dense = DiffusionGemmaModel.from_pretrained(folder, config=DiffusionConfig(dtype="float32"))
    fp4 = DiffusionGemmaModel.from_pretrained(folder, config=DiffusionConfig(dtype="nvfp4"))
    experts = fp4.transformer.layers[0].experts
    assert experts.quantized is not None and experts.gate_up_proj.numel() == 0
    # Each quantised expert dequantises to within FP4 precision of the original weights.
    gate_up = dense.transformer.layers[0].experts.gate_up_proj[3]
    restored = torch.cat(
        [experts.quantized[3][0].dequantize(torch.float32), experts.quantized[3][1].dequantize(torch.float32)]
    )
    assert ((restored - gate_up).norm() / gate_up.norm()).item() < 0.15
    assert isinstance(fp4.generate("x = ", max_tokens=16, num_diffusion_steps=2), str)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m: m.generate([], max_tokens=4), ConfigError),
        (lambda m: m.generate("x" * 20000, max_tokens=4), PromptTooLongError),
        (lambda m: m.generate("x", max_tokens=0), ConfigError),
        (lambda m: m.generate("x", max_tokens=4, temperature=0.3), ConfigError),
        (lambda m: m.generate("x", max_tokens=4, entropy_bound=-1.0), ConfigError),
        (lambda m: m.generate([2, 99999], max_tokens=4), ConfigError),
        (lambda m: m.infill("a", "b", max_tokens=0), ConfigError),
    ],
)
def test_bad_calls_get_a_clear_error(model, call, error):
    with pytest.raises(error) as info:
        call(model)
    assert str(info.value)
    assert isinstance(model.generate("ok", max_tokens=4, num_diffusion_steps=1), str)  # still serving


def test_prompt_too_long_says_the_numbers(model):
    with pytest.raises(PromptTooLongError, match=r"context is 4096 tokens"):
        model.generate("word " * 5000, max_tokens=16)


def test_out_of_memory_while_generating_suggests_remedies(tiny_checkpoint, monkeypatch):
    model = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=DiffusionConfig(dtype="float32"))

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model.transformer, "denoise", exhausted)
    with pytest.raises(OutOfMemoryError, match="nvfp4") as info:
        model.generate("x", max_tokens=4)
    assert "attention_slicing" in str(info.value) and "cpu_offload_unused_experts" in str(info.value)


def test_tokenization_and_chat_template_match_transformers(model, tiny_checkpoint):
    transformers = pytest.importorskip("transformers", minversion="5.11")
    hf = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    text = "def f(x):\n    return x  # ünïcode\n"
    assert model.tokenizer.encode(text) == hf(text)["input_ids"]
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Sort a list."},
        {"role": "assistant", "content": "sorted(xs)"},
        {"role": "user", "content": "In place?"},
    ]
    expected = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert model.chat_prompt_ids(messages) == list(expected)


def test_each_stream_carries_its_own_figures_while_another_call_runs(model):
    """Figures travel with their call: a stream's result is its own, however calls interleave."""
    long = model.generate_stream("import os", max_tokens=48, num_diffusion_steps=2, seed=5)
    first = next(long)
    assert long.result.stats.canvases >= 1 and long.result.text.startswith(first)
    # The model's lock is re-entrant on this thread, so a second call may run between two chunks.
    short = model.run(model.request("x = ", max_tokens=4, num_diffusion_steps=1, seed=1))
    rest = "".join(long)
    assert short.stats.canvases == 1 and short.stats.generated_tokens <= 4
    assert long.result.text == first + rest
    # ... and neither call saw the other's canvases.
    assert long.result.text == model.generate("import os", max_tokens=48, num_diffusion_steps=2, seed=5)
    assert short.text == model.generate("x = ", max_tokens=4, num_diffusion_steps=1, seed=1)
    assert long.result.stats.prompt_tokens == len(model.tokenizer.encode("import os"))
    assert long.result.stats.canvases == 3 or long.result.finish_reason == "stop"


def test_a_stream_never_shows_the_start_of_a_stop_string_before_it_is_decided(model):
    text = model.generate("x", max_tokens=48, num_diffusion_steps=2, seed=3)
    for start in range(4, len(text) - 3, 5):
        stop = text[start : start + 3]
        chunks = list(model.generate_stream("x", max_tokens=48, num_diffusion_steps=2, seed=3, stop=[stop]))
        assert "".join(chunks) == text[: text.find(stop)]
        for chunk in chunks[:-1]:
            assert not any(chunk.endswith(stop[:size]) for size in range(1, len(stop))), (chunk, stop)
