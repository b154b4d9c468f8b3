"""ModalityAdaptive (mPLUG-Owl2) on tiny LLaMA / Mistral / Qwen2 / LLaVA models built from configs.

The reference for mixed sequences is independent of the wrapper: two *unwrapped* copies of the
model, one carrying the text weights and one the visual weights in its norms and k/v projections,
read the sequence run by run (each run of same-modality tokens by the model of that modality) on
one shared KV cache — which is what per-token modality routing means.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tpo.backbones.modality_adaptive import (
    ModalityAdaptive,
    ModalityLinear,
    ModalityNorm,
    visual_indicators,
)

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS = 64, 32, 2, 4, 2
ATOL = 1e-5


def _small(cls, **extra):
    return cls(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
               num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
               pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)


CONFIGS = {
    "llama": (LlamaForCausalLM, lambda: _small(LlamaConfig)),
    "mistral": (MistralForCausalLM, lambda: _small(MistralConfig, sliding_window=None)),
    "qwen2": (Qwen2ForCausalLM, lambda: _small(Qwen2Config)),
}


def _build(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    cls, config = CONFIGS[kind]
    return cls(config()).eval()


def _mixed_batch(seed: int = 1):
    """ids (2, 12); indicators with visual runs at different places per sample."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 12), generator=g)
    ind = torch.zeros(2, 12, dtype=torch.long)
    ind[0, 3:7] = 1
    ind[1, 5:8] = 1
    ind[1, 10] = 1
    return ids, ind


def _perturb_visual(ma: ModalityAdaptive, scale: float = 0.3, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ma.branch_parameters(1):
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _layers(model):
    return model.model.layers


def _plain_with_branch(original, wrapped, way: int):
    """An unwrapped copy of ``original`` whose norms and k/v hold branch ``way`` of ``wrapped``."""
    plain = copy.deepcopy(original)
    with torch.no_grad():
        for dst, src in zip(_layers(plain), _layers(wrapped), strict=True):
            for attr in ("input_layernorm", "post_attention_layernorm"):
                norm = getattr(src, attr)
                branch = norm if way == 0 else norm.branches[str(way)]
                getattr(dst, attr).weight.copy_(branch.weight)
            for attr in ("k_proj", "v_proj"):
                proj = getattr(src.self_attn, attr)
                branch = proj if way == 0 else proj.branches[str(way)]
                getattr(dst.self_attn, attr).weight.copy_(branch.weight)
                if branch.bias is not None:
                    getattr(dst.self_attn, attr).bias.copy_(branch.bias)
    return plain


def _runwise_reference(plains, ids, ind):
    """Logits ``(B, L, V)``: each run of same-modality tokens through the plain model of its
    modality, on a shared cache, one sample at a time."""
    out = []
    for b in range(ids.shape[0]):
        cache, pieces, start = DynamicCache(), [], 0
        row = ind[b].tolist()
        while start < len(row):
            end = start
            while end < len(row) and row[end] == row[start]:
                end += 1
            step = plains[row[start]](input_ids=ids[b:b + 1, start:end], cache=cache,
                                      use_cache=True)
            pieces.append(step.logits)
            start = end
        out.append(torch.cat(pieces, 1))
    return torch.cat(out)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_wrap_keeps_outputs(kind):
    model = _build(kind)
    reference = copy.deepcopy(model)
    ma = ModalityAdaptive.wrap(model, num_modalities=2)
    ids, mixed = _mixed_batch()
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=ATOL)
        for ind in (torch.zeros_like(mixed), torch.ones_like(mixed), mixed):
            with ma.indicators(ind):
                assert torch.allclose(model(input_ids=ids).logits, expected, atol=ATOL)
    layer = _layers(model)[0]
    assert isinstance(layer.input_layernorm, ModalityNorm)
    assert isinstance(layer.post_attention_layernorm, ModalityNorm)
    assert isinstance(layer.self_attn.k_proj, ModalityLinear)
    assert isinstance(layer.self_attn.v_proj, ModalityLinear)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_changed_visual_branch_matches_runwise_reference(kind):
    model = _build(kind)
    original = copy.deepcopy(model)
    ma = ModalityAdaptive.wrap(model)
    _perturb_visual(ma)
    ids, mixed = _mixed_batch()
    plains = [_plain_with_branch(original, model, 0), _plain_with_branch(original, model, 1)]
    with torch.no_grad():
        text_only = original(input_ids=ids).logits
        # all text (no indicators, or explicit zeros): the visual branch is never read
        assert torch.allclose(model(input_ids=ids).logits, text_only, atol=ATOL)
        with ma.indicators(torch.zeros_like(mixed)):
            assert torch.allclose(model(input_ids=ids).logits, text_only, atol=ATOL)
        with ma.indicators(torch.ones_like(mixed)):
            all_visual = model(input_ids=ids).logits
        assert torch.allclose(all_visual, plains[1](input_ids=ids).logits, atol=ATOL)
        assert not torch.allclose(all_visual, text_only, atol=1e-3)
        with ma.indicators(mixed):
            got = model(input_ids=ids).logits
        assert torch.allclose(got, _runwise_reference(plains, ids, mixed), atol=ATOL)
    for b in range(ids.shape[0]):
        first = int(mixed[b].nonzero()[0, 0])
        assert torch.allclose(got[b, :first], text_only[b, :first], atol=ATOL)
        assert not torch.allclose(got[b, first:], text_only[b, first:], atol=1e-3)


def test_text_only_batch_leaves_visual_gradients_empty():
    model = _build("llama")
    ma = ModalityAdaptive.wrap(model)
    ids, mixed = _mixed_batch()
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is None for p in ma.branch_parameters(1))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ma.branch_parameters(0))
    model.zero_grad(set_to_none=True)
    with ma.indicators(torch.zeros_like(mixed)):
        model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is None for p in ma.branch_parameters(1))
    model.zero_grad(set_to_none=True)
    with ma.indicators(mixed):
        model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ma.branch_parameters(1))


def test_manual_cache_steps_equal_full_recomputation():
    model = _build("qwen2")
    ma = ModalityAdaptive.wrap(model)
    _perturb_visual(ma)
    ids, mixed = _mixed_batch()
    mixed[:, 0] = 1  # a visual first token: a cached step read as offset 0 would take its branch
    steps = 4
    with torch.no_grad(), ma.indicators(mixed):
        out = model(input_ids=ids, use_cache=True)
        cache, seq, step_logits = out.cache, ids, [out.logits[:, -1]]
        for _ in range(steps):
            nxt = step_logits[-1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            out = model(input_ids=nxt, cache=cache, use_cache=True)
            cache = out.cache
            step_logits.append(out.logits[:, -1])
        full = model(input_ids=seq).logits  # indicators cover the prompt; the rest is text
    expected = full[:, ids.shape[1] - 1:]
    assert torch.allclose(torch.stack(step_logits, 1), expected, atol=ATOL)
    # generated tokens are text: the unwrapped text model on the same cache agrees
    ind_full = torch.cat([mixed, torch.zeros(2, steps, dtype=torch.long)], 1)
    original = _build("qwen2")
    plains = [_plain_with_branch(original, model, 0), _plain_with_branch(original, model, 1)]
    with torch.no_grad():
        assert torch.allclose(full, _runwise_reference(plains, seq, ind_full), atol=ATOL)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_with_cache_equals_without(num_beams):
    model = _build("llama")
    ma = ModalityAdaptive.wrap(model)
    _perturb_visual(ma)
    ids, mixed = _mixed_batch()
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                  num_beams=num_beams, pad_token_id=0)
    with torch.no_grad(), ma.indicators(mixed):
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
        text_only = None
    with torch.no_grad():
        text_only = model.generate(ids, use_cache=True, **kwargs)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] == ids.shape[1] + 6
    # the visual branch changed what is generated (so the indicators reached generate)
    assert not torch.equal(cached, text_only)


@pytest.mark.parametrize("kind, bias", [("llama", False), ("qwen2", True)])
def test_parameter_overhead(kind, bias):
    model = _build(kind)
    config = model.config
    before = sum(p.numel() for p in model.parameters())
    ma = ModalityAdaptive.wrap(model)
    after = sum(p.numel() for p in model.parameters())
    d = config.hidden_size
    d_kv = config.num_key_value_heads * (d // config.num_attention_heads)
    assert d_kv < d  # grouped-query attention
    per_layer = 2 * d * d_kv + 2 * d + (2 * d_kv if bias else 0)
    assert after - before == config.num_hidden_layers * per_layer
    assert sum(p.numel() for p in ma.branch_parameters(1)) == config.num_hidden_layers * per_layer
    assert sum(p.numel() for p in ma.branch_parameters(0)) == config.num_hidden_layers * per_layer
    names = [n for n, _ in ma.named_branch_parameters(1)]
    assert len(names) == len(ma.branch_parameters(1))
    assert "model.layers.0.self_attn.k_proj.branches.1.weight" in names
    assert "model.layers.1.post_attention_layernorm.branches.1.weight" in names
    assert not set(names) & {n for n, _ in ma.named_branch_parameters(0)}


def _tiny_llava(seed: int = 0):
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=128, hidden_size=HIDDEN, intermediate_size=64,
                                num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                num_key_value_heads=KV_HEADS, pad_token_id=0),
        image_token_index=127, vision_feature_layer=-1, vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(config).eval()


def test_llava_language_model_is_wrapped_and_reads_image_positions():
    model = _tiny_llava()
    original = copy.deepcopy(model)
    ma = ModalityAdaptive.wrap(model, visual_token_ids=[127])
    g = torch.Generator().manual_seed(3)
    ids = torch.cat([torch.randint(3, 120, (1, 3), generator=g), torch.full((1, 16), 127),
                     torch.randint(3, 120, (1, 4), generator=g)], 1)
    pixels = torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        expected = original(input_ids=ids, pixel_values=pixels).logits
        assert torch.allclose(model(input_ids=ids, pixel_values=pixels).logits, expected, atol=ATOL)
        _perturb_visual(ma)
        auto = model(input_ids=ids, pixel_values=pixels).logits
        with ma.indicators(visual_indicators(ids, [127])):
            explicit = model(input_ids=ids, pixel_values=pixels).logits
        with ma.indicators(torch.zeros_like(ids)):
            as_text = model(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(auto, explicit, atol=ATOL)
    assert torch.allclose(as_text, expected, atol=ATOL)
    assert torch.allclose(auto[:, :3], expected[:, :3], atol=ATOL)
    assert not torch.allclose(auto[:, 3:], expected[:, 3:], atol=1e-3)
    with torch.no_grad():
        kwargs = dict(pixel_values=pixels, max_new_tokens=5, do_sample=False, pad_token_id=0)
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_visual_indicators_marks_visual_token_ids():
    ids = torch.tensor([[5, 9, 9, 7, 8], [8, 5, 5, 9, 0]])
    expected = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 1, 0]])
    assert torch.equal(visual_indicators(ids, [9, 8]), expected)
    assert visual_indicators(ids, [9, 8]).dtype == torch.long
    with pytest.raises(ValueError, match="input_ids"):
        visual_indicators(ids[0], [9])


def test_lora_after_wrapping_targets_the_text_branch():
    peft = pytest.importorskip("peft", reason="LoRA is the optional peft extra")
    model = _build("llama")
    ma = ModalityAdaptive.wrap(model)
    _perturb_visual(ma)
    ids, mixed = _mixed_batch()
    with torch.no_grad(), ma.indicators(mixed):
        before = model(input_ids=ids).logits
    peft.inject_adapter_in_model(peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"]),
                                 model)
    k_proj = _layers(model)[0].self_attn.k_proj
    assert isinstance(k_proj.base_layer, ModalityLinear)
    with torch.no_grad(), ma.indicators(mixed):
        assert torch.allclose(model(input_ids=ids).logits, before, atol=ATOL)
    for p in ma.branch_parameters(1):  # PEFT froze the base weights; a stage preset trains these
        p.requires_grad_(True)
    with ma.indicators(mixed):
        model(input_ids=ids, labels=ids).loss.backward()
    assert k_proj.lora_A["default"].weight.grad is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ma.branch_parameters(1))
    assert all(p.grad is None for p in ma.branch_parameters(0))


def test_gradient_checkpointing_recomputes_with_the_forward_modalities():
    ids, mixed = _mixed_batch()
    grads = []
    for checkpointing in (False, True):
        model = _build("llama")
        ma = ModalityAdaptive.wrap(model)
        _perturb_visual(ma)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False,
                                                   "context_fn": ma.checkpoint_context})
        with ma.indicators(mixed):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()  # outside the context, as a trainer does
        grads.append([p.grad.clone() for p in ma.branch_parameters(1)])
    for plain, checkpointed in zip(*grads, strict=True):
        assert torch.allclose(plain, checkpointed, atol=ATOL)


def test_bad_input_raises():
    model = _build("llama")
    ma = ModalityAdaptive.wrap(model)
    ids, mixed = _mixed_batch()
    with pytest.raises(ValueError, match="num_modalities"):
        ModalityAdaptive.wrap(_build("llama"), num_modalities=1)
    with pytest.raises(ValueError, match="already"):
        ModalityAdaptive.wrap(model)
    with pytest.raises(ValueError, match="no decoder layer"):
        ModalityAdaptive.wrap(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        with ma.indicators(mixed * 2):
            pass
    with pytest.raises(ValueError, match="integer"):
        with ma.indicators(mixed.float()):
            pass
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        with ma.indicators(mixed[0]):
            pass
    with pytest.raises(ValueError, match="batch of 2"):
        with ma.indicators(mixed), torch.no_grad():
            model(input_ids=torch.cat([ids, ids[:1]]))


def test_text_branch_keeps_the_original_state_dict_keys():
    original = _build("qwen2")
    model = _build("qwen2", seed=5)
    ma = ModalityAdaptive.wrap(model)
    missing, unexpected = model.load_state_dict(original.state_dict(), strict=False)
    assert unexpected == []
    assert set(missing) == {n for n, _ in ma.named_branch_parameters(1)}
    ids, mixed = _mixed_batch()
    model.double()
    original.double()
    with torch.no_grad():
        expected = original(input_ids=ids).logits
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-10)
        # the visual branch kept its own (seed-5) initialisation
        with ma.indicators(mixed):
            assert not torch.allclose(model(input_ids=ids).logits, expected, atol=1e-3)


def test_gradient_checkpointing_without_the_context_raises():
    model = _build("llama")
    ma = ModalityAdaptive.wrap(model)
    model.train()
    model.activation_checkpointing_enable({"use_reentrant": False})
    ids, mixed = _mixed_batch()
    with ma.indicators(mixed):
        loss = model(input_ids=ids, labels=ids).loss
    with pytest.raises(RuntimeError, match="checkpoint_context"):
        loss.backward()
