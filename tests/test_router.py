"""TaskRouter (UnifiedMLLM): parsing, clamping, dispatch, text fallback, gradients, new tasks."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import tpo.tasks
import tpo.tokens
from tpo.backbones.tiny import train_tiny_tokenizer
from tpo.router import (
    ExpertTarget,
    HeadTarget,
    RouterWarning,
    TaskCall,
    TaskRouter,
)
from tpo.tasks import TaskSpec

HIDDEN = 16
EDIT = TaskSpec("edit", "<edit_begin>", "<edit>")


@pytest.fixture
def isolated_registry():
    """New tasks registered by a test vanish afterwards (other tests build TaskTokens of all tasks)."""
    saved = tpo.tasks.list_tasks()
    yield
    for name in tpo.tasks.list_tasks():
        if name not in saved:
            tpo.tasks.unregister_task(name)


@pytest.fixture(scope="module")
def base_tokenizer():
    return train_tiny_tokenizer()


@pytest.fixture
def tokenizer(base_tokenizer):
    tok = copy.deepcopy(base_tokenizer)
    tokens = [t for name in ("temporal", "box", "track", "mask")
              for t in tpo.tasks.get_task_spec(name).tokens]
    tok.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    return tok


# ---------------------------------------------------------------------- parse / format
_coord = st.integers(0, 1000).map(lambda k: k / 1000)


@st.composite
def _regions(draw):
    x = sorted([draw(_coord), draw(_coord)])
    y = sorted([draw(_coord), draw(_coord)])
    return (x[0], y[0], x[1], y[1])


_calls = st.builds(
    TaskCall,
    task=st.sampled_from(["temporal", "box", "track", "mask"]),
    span=st.text(alphabet="abcdefgh xyz", max_size=20).map(lambda s: " ".join(s.split())),
    regions=st.lists(_regions(), max_size=3).map(tuple),
)


@settings(max_examples=60, deadline=None)
@given(call=_calls, scale=st.sampled_from([(1.0, 3), (1000.0, 0)]))
def test_parse_format_round_trip(call, scale):
    router = TaskRouter(coordinate_scale=scale[0], decimals=scale[1])
    text = "Sure. " + router.format_call(call) + " Anything else?"
    parsed = router.parse_text(text)
    assert parsed.errors == []
    assert parsed.calls == [call]
    assert parsed.text == "Sure.  Anything else?"
    assert router.format_call(parsed.calls[0]) == router.format_call(call)


def test_format_writes_the_documented_syntax():
    router = TaskRouter()
    call = TaskCall("box", "the  red square", ((0.12, 0.3, 0.45, 0.61),))
    assert router.format_call(call) == "<box_begin>the red square [0.120, 0.300, 0.450, 0.610]<boxes>"
    assert router.format_call(TaskCall("temporal")) == "<time_begin><temp>"


@pytest.mark.parametrize("text, scale, expected", [
    ("<box_begin>cat [1.2, -0.1, 0.3, 0.8]<boxes>", 1.0, (0.3, 0.0, 1.0, 0.8)),
    ("<box_begin>cat [0.5, 0.9, 0.1, 0.2]<boxes>", 1.0, (0.1, 0.2, 0.5, 0.9)),
    ("<box_begin>cat [500, 900, 100, 1200]<boxes>", 1000.0, (0.1, 0.9, 0.5, 1.0)),
    ("<box_begin>cat [ 2e-1 ,.5,  0.25, 1 ]<boxes>", 1.0, (0.2, 0.5, 0.25, 1.0)),
])
def test_coordinates_are_clamped_and_ordered(text, scale, expected):
    parsed = TaskRouter(coordinate_scale=scale).parse_text(text)
    assert parsed.errors == []
    (call,) = parsed.calls
    assert call.span == "cat"
    assert call.regions == (pytest.approx(expected),)
    x1, y1, x2, y2 = call.regions[0]
    assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1


def test_task_call_rejects_invalid_regions():
    with pytest.raises(ValueError, match="regions"):
        TaskCall("box", regions=((0.5, 0.1, 0.2, 0.3),))
    with pytest.raises(ValueError, match="regions"):
        TaskCall("box", regions=((0.1, 0.1, 0.2, 1.3),))


MALFORMED = [
    "<box_begin>the cat [0.1, 0.2, 0.3, 0.4]",                      # never closed
    "here <boxes> it is",                                          # placeholder without begin
    "<box_begin>the cat<temp>",                                    # another task's placeholder
    "<box_begin>the cat [0.1, 0.2, 0.3]<boxes>",                   # three numbers
    "<box_begin>the cat [0.1, 0.2, a, 0.4]<boxes>",                # not a number
    "<box_begin>the cat [0.1, 0.2, 0.3, 0.4<boxes>",               # unbalanced bracket
    "<box_begin>a <box_begin>b [0, 0, 1, 1]<boxes>",               # begin inside a call
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_output_is_reported(text):
    parsed = TaskRouter().parse_text(text)
    assert parsed.errors
    assert "<box_begin>" not in parsed.text and "<boxes>" not in parsed.text


def test_malformed_and_unknown_outputs_fall_back_to_text_within_a_batch():
    seen = []
    router = TaskRouter(targets={"box": ExpertTarget(lambda call: seen.append(call) or "detected")})
    texts = [*MALFORMED, "<box_begin>dog [0, 0, 0.5, 0.5]<boxes>",
             "<track_begin>the car<tracking>",  # registered task without a target here
             "just text"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = router.route(texts=texts)
    assert [r.index for r in results] == list(range(len(texts)))
    routes = [r.route for r in results]
    assert routes == ["text"] * len(MALFORMED) + ["symbolic", "text", "text"]
    assert results[len(MALFORMED)].output == "detected"
    assert [c.span for c in seen] == ["dog"]
    messages = [str(w.message) for w in caught if issubclass(w.category, RouterWarning)]
    assert len(messages) == len(MALFORMED) + 1  # "just text" is not a failure
    assert "'track' has no target" in messages[-1]
    assert results[-2].text == "the car" and results[-1].text == "just text"


# ---------------------------------------------------------------------- dispatch from ids
class _RecordingHead(nn.Module):
    """A tiny differentiable head: ``(N, D), visual (N, V) -> (N, 4)``; records what it saw."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(HIDDEN, 4)
        self.calls = []

    def forward(self, task_embeds, visual):
        self.calls.append((task_embeds.detach().clone(), visual.clone()))
        return self.linear(task_embeds) + visual.sum(-1, keepdim=True)


def _batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    hidden = torch.randn(*enc.input_ids.shape, HIDDEN, requires_grad=True)
    return enc.input_ids, hidden


def test_mixed_task_batch_goes_to_exactly_one_target_each(tokenizer, isolated_registry):
    box_head, time_head = _RecordingHead(1), _RecordingHead(2)
    edits = []
    router = TaskRouter(tokenizer=tokenizer, targets={
        "box": HeadTarget(box_head, inputs=("visual",)),
        "temporal": HeadTarget(time_head, inputs=("visual",)),
    })
    router.register(EDIT, ExpertTarget(lambda call, image: edits.append((call, image)) or f"edited {image}",
                                       inputs=("image",)))
    texts = [
        "It is here <box_begin>the red square [0.1, 0.2, 0.3, 0.4]<boxes>",
        "<time_begin>when it moves<temp>",
        "No task in this answer.",
        "<edit_begin>make it blue [0, 0, 1, 1]<edit>",
        "<box_begin>the circle<boxes> done",
        "<box_begin>broken [1, 2]<boxes>",
    ]
    ids, hidden = _batch(tokenizer, texts)
    visual = torch.arange(len(texts) * 3, dtype=torch.float32).view(len(texts), 3)
    images = [f"img{i}" for i in range(len(texts))]
    with pytest.warns(RouterWarning, match="sample 5"):
        results = router.route(sequences=ids, hidden_states=hidden,
                               inputs={"visual": visual, "image": images})
    assert [r.index for r in results] == list(range(len(texts)))
    assert [r.route for r in results] == ["latent", "latent", "text", "symbolic", "latent", "text"]
    tasks = [r.call.task if r.call else None for r in results]
    assert tasks == ["box", "temporal", None, "edit", "box", None]
    # each target saw exactly its samples, once, in sample order
    assert len(box_head.calls) == 1 and len(time_head.calls) == 1
    assert torch.equal(box_head.calls[0][1], visual[[0, 4]])
    assert torch.equal(time_head.calls[0][1], visual[[1]])
    assert [(c.span, img) for c, img in edits] == [("make it blue", "img3")]
    assert results[3].output == "edited img3"
    assert results[3].call.regions == ((0.0, 0.0, 1.0, 1.0),)
    # latent outputs: the head applied to the hidden state at the placeholder token
    vocab = tokenizer.get_vocab()
    for i, head, token in [(0, box_head, "<boxes>"), (4, box_head, "<boxes>"), (1, time_head, "<temp>")]:
        (position,) = (ids[i] == vocab[token]).nonzero()[:, 0].tolist()
        assert results[i].call.position == position
        expected = head.linear(hidden[i, position]) + visual[i].sum()
        assert torch.allclose(results[i].output, expected)
    assert results[0].text == "It is here" and results[4].text == "done"
    assert results[2].text == "No task in this answer."


def test_gradients_flow_through_a_latent_head(tokenizer):
    head = nn.Linear(HIDDEN, 4)
    router = TaskRouter(tokenizer=tokenizer, targets={"box": HeadTarget(head)})
    texts = ["plain answer", "<box_begin>x<boxes>", "<box_begin>y [0, 0, 1, 1]<boxes> ok"]
    ids, hidden = _batch(tokenizer, texts)
    results = router.route(sequences=ids, hidden_states=hidden)
    loss = sum(r.output.square().sum() for r in results if r.route == "latent")
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    placeholder = tokenizer.get_vocab()["<boxes>"]
    touched = hidden.grad.abs().sum(-1) > 0
    assert torch.equal(touched, ids == placeholder)


def test_real_box_head_output_is_split_per_sample(tokenizer):
    heads = pytest.importorskip("tpo.heads", reason="the heads package is optional for the router")
    head = heads.BoxHead(embed_dim=HIDDEN, visual_dim=8)
    router = TaskRouter(tokenizer=tokenizer, targets={"box": HeadTarget(head, inputs=("visual",))})
    ids, hidden = _batch(tokenizer, ["<box_begin>a<boxes>", "text", "<box_begin>b<boxes>"])
    visual = torch.randn(3, 16, 8)
    results = router.route(sequences=ids, hidden_states=hidden, inputs={"visual": visual})
    assert [r.route for r in results] == ["latent", "text", "latent"]
    assert results[0].output.boxes.shape == (4,)
    batched = head(hidden[[0, 2], (ids[[0, 2]] == tokenizer.get_vocab()["<boxes>"]).int().argmax(1)],
                   visual[[0, 2]])
    assert torch.allclose(results[2].output.boxes, batched.boxes[1])


def test_parse_ids_drops_padding_and_end_tokens(tokenizer):
    router = TaskRouter(tokenizer=tokenizer)
    body = tokenizer("<box_begin>the cat<boxes> here", add_special_tokens=False).input_ids
    ids = body + [tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.pad_token_id]
    parsed = router.parse_ids(torch.tensor(ids))
    assert parsed.errors == []
    assert parsed.text == "here"
    (call,) = parsed.calls
    position = body.index(tokenizer.get_vocab()["<boxes>"])
    assert (call.task, call.span, call.position) == ("box", "the cat", position)


def test_bad_requests_raise_before_dispatch(tokenizer):
    called = []
    router = TaskRouter(tokenizer=tokenizer, targets={
        "box": HeadTarget(nn.Linear(HIDDEN, 4)),
        "mask": ExpertTarget(lambda call, image: called.append(call), inputs=("image",)),
    })
    texts = ["<seg_begin>the dog<seg>", "<box_begin>a cat<boxes>"]
    with pytest.raises(ValueError, match="routed to a head"):
        router.route(texts=texts, inputs={"image": [1, 2]})
    assert called == []
    with pytest.raises(ValueError, match="needs 'image'"):
        router.route(texts=texts[:1])
    with pytest.raises(ValueError, match="exactly one"):
        router.route()
    ids, hidden = _batch(tokenizer, texts)
    with pytest.raises(ValueError, match="hidden_states"):
        router.route(sequences=ids, hidden_states=hidden[:, :-1], inputs={"image": [1, 2]})
    assert called == []
    with pytest.raises(ValueError, match="already has a target"):
        router.register("box", HeadTarget(nn.Linear(HIDDEN, 4)))
    with pytest.raises(ValueError, match="not registered"):
        router.register("nope", ExpertTarget(print))


def test_registering_a_task_adds_tokens_without_touching_others(tokenizer, isolated_registry):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN,
                                         intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    box_target = HeadTarget(nn.Linear(HIDDEN, 4))
    router = TaskRouter(tokenizer=tokenizer, targets={"box": box_target})
    old_vocab = dict(tokenizer.get_vocab())
    old_rows = model.get_input_embeddings().weight.detach().clone()
    spec = router.register(EDIT, ExpertTarget(lambda call: call.span))
    assert spec is tpo.tasks.get_task_spec("edit")
    new_vocab = tokenizer.get_vocab()
    assert set(new_vocab) - set(old_vocab) == {"<edit_begin>", "<edit>"}
    assert all(new_vocab[t] == i for t, i in old_vocab.items())
    assert router.target("box") is box_target
    assert router.tasks == ["box", "edit"]
    # with a model: embeddings grow, old rows unchanged, new rows are the mean of the old ones
    router.register(TaskSpec("caption", "<cap_begin>", "<cap>"), ExpertTarget(str), model=model)
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] == len(tokenizer) == old_rows.shape[0] + 4
    assert torch.equal(weight[:old_rows.shape[0]], old_rows)
    assert torch.allclose(weight[-1], old_rows.mean(0), atol=1e-6)
    ids = torch.tensor(tokenizer("<edit_begin>blue sky<edit>", add_special_tokens=False).input_ids)
    (result,) = router.route(sequences=ids[None])
    assert (result.route, result.output) == ("symbolic", "blue sky")


def test_an_answer_with_two_calls_goes_to_the_first_only():
    seen = []
    router = TaskRouter(targets={"box": ExpertTarget(lambda call: seen.append(call.task)),
                                 "mask": ExpertTarget(lambda call: seen.append(call.task))})
    with pytest.warns(RouterWarning, match="2 task calls"):
        (result,) = router.route(texts=["<seg_begin>dog<seg> and <box_begin>cat<boxes>"])
    assert seen == ["mask"]
    assert (result.route, result.call.task, result.text) == ("symbolic", "mask", "and")


# ---------------------------------------------------------------------- head outputs per sample
def test_aux_layers_are_split_per_sample_not_by_layer(tokenizer):
    """Two routed samples and two auxiliary decoder layers: ``aux`` stays a list of layers."""
    heads = pytest.importorskip("tpo.heads", reason="the heads package is optional for the router")
    torch.manual_seed(0)
    head = heads.TemporalGroundingHead(embed_dim=HIDDEN, video_dim=8, num_queries=3, hidden_dim=16,
                                       num_heads=2, num_encoder_layers=1, num_decoder_layers=3,
                                       dim_feedforward=32, dropout=0.0).eval()
    router = TaskRouter(tokenizer=tokenizer, targets={"temporal": HeadTarget(head, inputs=("video",))})
    ids, hidden = _batch(tokenizer, ["<time_begin>a<temp>", "text", "<time_begin>b<temp>"])
    video = torch.randn(3, 5, 8)
    results = router.route(sequences=ids, hidden_states=hidden, inputs={"video": video})
    assert [r.route for r in results] == ["latent", "text", "latent"]
    position = (ids[[0, 2]] == tokenizer.get_vocab()["<temp>"]).int().argmax(1)
    batched = head(hidden[[0, 2], position], video[[0, 2]])
    assert len(batched.aux) == 2  # == the number of routed samples
    for j, i in enumerate([0, 2]):
        out = results[i].output
        assert out.spans.shape == (3, 2) and out.logits.shape == (3,)
        assert torch.allclose(out.spans, batched.spans[j])
        assert len(out.aux) == len(batched.aux)
        for (spans, logits), (all_spans, all_logits) in zip(out.aux, batched.aux, strict=True):
            assert spans.shape == (3, 2) and logits.shape == (3,)
            assert torch.allclose(spans, all_spans[j]) and torch.allclose(logits, all_logits[j])


class _ListHead(nn.Module):
    """A head returning ``{"layers": [(N, 2), (N, 2)]}`` or, with ``per_sample``, one item per sample."""

    def __init__(self, per_sample: int | None = None):
        super().__init__()
        self.per_sample = per_sample

    def forward(self, task_embeds):
        if self.per_sample is not None:
            return [f"item {k}" for k in range(self.per_sample)]
        return {"layers": [task_embeds[:, :2], task_embeds[:, 2:4]], "scale": (3, 4)}


def test_nested_lists_are_containers_and_a_returned_list_is_per_sample(tokenizer):
    ids, hidden = _batch(tokenizer, ["<box_begin>a<boxes>", "<box_begin>b<boxes>"])
    router = TaskRouter(tokenizer=tokenizer, targets={"box": HeadTarget(_ListHead())})
    results = router.route(sequences=ids, hidden_states=hidden)
    position = (ids[1] == tokenizer.get_vocab()["<boxes>"]).nonzero()[0, 0]
    out = results[1].output
    assert isinstance(out["layers"], list) and len(out["layers"]) == 2 and out["scale"] == (3, 4)
    assert torch.equal(out["layers"][0], hidden[1, position, :2])
    assert torch.equal(out["layers"][1], hidden[1, position, 2:4])
    router = TaskRouter(tokenizer=tokenizer, targets={"box": HeadTarget(_ListHead(per_sample=2))})
    assert [r.output for r in router.route(sequences=ids, hidden_states=hidden)] == ["item 0", "item 1"]
    router = TaskRouter(tokenizer=tokenizer, targets={"box": HeadTarget(_ListHead(per_sample=3))})
    with pytest.raises(ValueError, match="3 items for 2 routed samples"):
        router.route(sequences=ids, hidden_states=hidden)


# ---------------------------------------------------------------------- literal task-token text
def _literal_ids(base_tokenizer, tokenizer, text):
    """Ordinary sub-word ids (from the tokenizer without task tokens) that decode to ``text``."""
    ids = base_tokenizer(text, add_special_tokens=False).input_ids
    task_ids = {tokenizer.get_vocab()[t] for name in ("temporal", "box", "track", "mask")
                for t in tpo.tasks.get_task_spec(name).tokens}
    assert len(ids) > 1 and not task_ids & set(ids)
    assert tokenizer.decode(ids) == text
    return ids


def test_literal_task_token_text_before_a_call_is_just_text(base_tokenizer, tokenizer):
    def encode(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    head = nn.Linear(HIDDEN, 4)
    router = TaskRouter(tokenizer=tokenizer, targets={"temporal": HeadTarget(head)})
    ids = _literal_ids(base_tokenizer, tokenizer, "<temp>") + encode(" then <time_begin>when it moves<temp>")
    parsed = router.parse_ids(ids)
    assert parsed.errors == []
    (call,) = parsed.calls
    assert (call.task, call.span, call.position) == ("temporal", "when it moves", len(ids) - 1)
    assert parsed.text == "<temp> then" and parsed.plain == "<temp> then when it moves"
    # within a batch: nothing raises, the sample still goes to its head
    plain = encode("just text")
    pad = tokenizer.pad_token_id
    sequences = torch.tensor([ids, plain + [pad] * (len(ids) - len(plain))])
    hidden = torch.randn(*sequences.shape, HIDDEN)
    results = router.route(sequences=sequences, hidden_states=hidden)
    assert [r.route for r in results] == ["latent", "text"]
    assert torch.allclose(results[0].output, head(hidden[0, -1]))


@pytest.mark.parametrize("literal", ["<boxes>", "<box_begin>", "<temp>", "<time_begin>"])
def test_literal_task_token_text_inside_a_call_is_span_text(base_tokenizer, tokenizer, literal):
    def encode(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    router = TaskRouter(tokenizer=tokenizer)
    ids = (encode("<box_begin>the") + _literal_ids(base_tokenizer, tokenizer, f" {literal}")
           + encode(" cat [0.1, 0.2, 0.3, 0.4]<boxes> ok"))
    parsed = router.parse_ids(ids)
    assert parsed.errors == []
    (call,) = parsed.calls
    assert call.span == f"the {literal} cat"
    assert call.regions == (pytest.approx((0.1, 0.2, 0.3, 0.4)),)
    assert call.position == ids.index(tokenizer.get_vocab()["<boxes>"])
    assert parsed.text == "ok"
