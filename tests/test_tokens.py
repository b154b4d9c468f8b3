"""TaskTokens: registry, tokenizer/embedding growth, injection and gathering."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tpo.backbones.tiny import train_tiny_tokenizer
from tpo.tasks import TaskSpec, get_task_spec, list_tasks, register_task, unregister_task
from tpo.tokens import TaskTokens

HIDDEN = 16
BUILTIN = ["temporal", "box", "track", "mask"]


@pytest.fixture
def clean_registry():
    saved = list_tasks()
    yield
    for name in list_tasks():
        if name not in saved:
            unregister_task(name)


@pytest.fixture
def tokenizer():
    return train_tiny_tokenizer()


@pytest.fixture
def bound(tokenizer):
    tokens = TaskTokens(hidden_size=HIDDEN, tasks=BUILTIN)
    tokens.add_to(tokenizer)
    return tokens, tokenizer


def test_builtin_registry_has_the_tpo_tokens():
    assert list_tasks()[:4] == ["temporal", "box", "track", "mask"]
    assert get_task_spec("temporal").tokens == ("<time_begin>", "<temp>")
    assert get_task_spec("track").tokens == ("<track_begin>", "<tracking>", "<track_box>")
    assert get_task_spec("mask").tokens == ("<seg_begin>", "<seg>")


def test_unregistered_task_name_is_rejected_with_the_known_names():
    with pytest.raises(ValueError, match=r"'count' is not registered.*temporal"):
        TaskTokens(hidden_size=HIDDEN, tasks=["temporal", "count"])


def test_user_task_registers_and_clashing_tokens_are_rejected(clean_registry):
    spec = register_task(TaskSpec("count_test", "<count_begin>", "<count>"))
    tokens = TaskTokens(hidden_size=HIDDEN, tasks=["temporal", "count_test"])
    assert tokens.task_names == ["temporal", "count_test"]
    assert register_task(spec) is spec  # the same spec again is a no-op
    with pytest.raises(ValueError, match="already used by task 'temporal'"):
        register_task(TaskSpec("clash_test", "<clash_begin>", "<temp>"))


def test_add_to_grows_tokenizer_and_embeddings_with_mean_rows(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    tokens = TaskTokens(hidden_size=HIDDEN, tasks=BUILTIN)
    added = tokens.add_to(tokenizer, model)
    assert added == 9  # 4 begin + 4 placeholder + <track_box>
    new_in = model.get_input_embeddings().weight
    new_out = model.get_output_embeddings().weight
    assert new_in.shape[0] == len(tokenizer) == old_in.shape[0] + 9
    assert torch.equal(new_in[: old_in.shape[0]], old_in)
    torch.testing.assert_close(new_in[old_in.shape[0] :], old_in.mean(0).expand(9, -1))
    torch.testing.assert_close(new_out[old_out.shape[0] :], old_out.mean(0).expand(9, -1))
    assert model.config.vocab_size == len(tokenizer)
    ids = tokenizer.convert_tokens_to_ids(["<time_begin>", "<temp>", "<track_box>"])
    assert tokens.begin_ids[0] == ids[0] and tokens.placeholder_ids[0] == ids[1]
    assert tokens.input_ids_of_boxes.tolist() == [ids[2]]
    # the task tokens stay single tokens in running text
    encoded = tokenizer("find it <time_begin><temp> now").input_ids
    assert ids[0] in encoded and ids[1] in encoded
    assert tokens.add_to(tokenizer, model) == 0  # idempotent


def test_tokenizer_without_task_tokens_is_rejected(tokenizer):
    tokens = TaskTokens(hidden_size=HIDDEN, tasks=["box", "mask"])
    with pytest.raises(ValueError, match=r"lacks the task tokens \['<box_begin>', '<boxes>'"):
        tokens.bind(tokenizer)
    with pytest.raises(ValueError, match="no token ids"):
        tokens.inject(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, HIDDEN))


def _slow_inject(tokens: TaskTokens, input_ids, embeds, boxes):
    out = embeds.clone()
    placeholders = {int(i): name for i, name in zip(tokens.placeholder_ids, tokens.task_names, strict=True)}
    box_id = int(tokens.input_ids_of_boxes[0])
    k = 0
    for b in range(input_ids.shape[0]):
        for pos in range(input_ids.shape[1]):
            token = int(input_ids[b, pos])
            if token in placeholders:
                out[b, pos] = tokens.embeddings[placeholders[token]]
            elif token == box_id:
                out[b, pos] = tokens.box_encoder(boxes[k : k + 1])[0]
                k += 1
    return out


def _batch_with_task_tokens(tokens: TaskTokens, counts: list[int], length: int = 12, seed: int = 0):
    """Random text ids with ``counts[b]`` task placeholders in sample b (mixed tasks)."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(10, 200, (len(counts), length), generator=gen)
    placeholders = tokens.placeholder_ids
    for b, count in enumerate(counts):
        positions = torch.randperm(length, generator=gen)[:count]
        choice = torch.randint(0, len(placeholders), (count,), generator=gen)
        input_ids[b, positions] = placeholders[choice]
    return input_ids


def test_inject_and_gather_match_a_per_sample_reference(bound):
    tokens, _ = bound
    counts = [0, 1, 3, 2]
    box_id = int(tokens.input_ids_of_boxes[0])
    box_column = torch.tensor([[20], [box_id], [21], [box_id]])
    input_ids = torch.cat([box_column, _batch_with_task_tokens(tokens, counts)], dim=1)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.1, 0.9, 0.05, 0.1]])
    embeds = torch.randn(*input_ids.shape, HIDDEN)
    out = tokens.inject(input_ids, embeds, boxes)
    torch.testing.assert_close(out, _slow_inject(tokens, input_ids, embeds, boxes))

    hidden = torch.randn(*input_ids.shape, HIDDEN)
    gathered = tokens.gather(input_ids, hidden)
    assert set(gathered) == set(tokens.task_names)
    total = 0
    for name, pid in zip(tokens.task_names, tokens.placeholder_ids.tolist(), strict=True):
        expected = [
            (b, p)
            for b in range(input_ids.shape[0])
            for p in range(input_ids.shape[1])
            if int(input_ids[b, p]) == pid
        ]
        got = list(zip(gathered[name].batch_index.tolist(), gathered[name].position.tolist(), strict=True))
        assert got == expected
        ref = (
            torch.stack([hidden[b, p] for b, p in expected]) if expected else torch.empty(0, HIDDEN)
        )
        torch.testing.assert_close(gathered[name].embeds, ref)
        total += len(gathered[name])
    assert total == sum(counts)


def test_gradients_reach_task_embeddings_and_box_encoder(bound):
    tokens, _ = bound
    box_column = torch.tensor([[int(tokens.input_ids_of_boxes[0])], [20]])
    input_ids = torch.cat([box_column, _batch_with_task_tokens(tokens, [2, 1])], dim=1)
    embeds = torch.randn(*input_ids.shape, HIDDEN)
    out = tokens.inject(input_ids, embeds, torch.tensor([[0.4, 0.4, 0.2, 0.2]]))
    out.pow(2).sum().backward()
    used = {
        tokens.task_names[i]
        for i in tokens.placeholder_task_index(input_ids).flatten().tolist()
        if i >= 0
    }
    for name in tokens.task_names:
        grad = tokens.embeddings[name].grad
        assert (grad is not None and grad.abs().sum() > 0) == (name in used)
    assert tokens.box_encoder.mlp[0].weight.grad.abs().sum() > 0


def test_bad_prompt_boxes_are_named(bound):
    tokens, _ = bound
    input_ids = torch.full((2, 5), 20)
    input_ids[1, 2] = tokens.input_ids_of_boxes[0]
    embeds = torch.zeros(2, 5, HIDDEN)
    with pytest.raises(ValueError, match="1 input-box tokens .*<track_box>.* but 0 boxes"):
        tokens.inject(input_ids, embeds)
    with pytest.raises(ValueError, match=r"boxes\[0\] = \[0.5, 1.5, 0.1, 0.1\].*\[0, 1\]"):
        tokens.inject(input_ids, embeds, torch.tensor([[0.5, 1.5, 0.1, 0.1]]))
    with pytest.raises(ValueError, match="inputs_embeds: expected shape"):
        tokens.inject(input_ids, torch.zeros(2, 4, HIDDEN))


def test_save_and_load_round_trip(bound, tmp_path):
    tokens, tokenizer = bound
    tokens.save_pretrained(tmp_path / "tt")
    loaded = TaskTokens.from_pretrained(tmp_path / "tt")
    assert loaded.task_names == tokens.task_names
    assert torch.equal(loaded.token_ids, tokens.token_ids)
    for name in tokens.task_names:
        assert torch.equal(loaded.embeddings[name], tokens.embeddings[name])
    input_ids = _batch_with_task_tokens(tokens, [3])
    embeds = torch.randn(*input_ids.shape, HIDDEN)
    torch.testing.assert_close(loaded.inject(input_ids, embeds), tokens.inject(input_ids, embeds))
