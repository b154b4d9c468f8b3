"""QueryWords: the bag of the query's words added to task embeddings, from collator to head."""

from __future__ import annotations

import pytest
import torch

from tpo.backbones.tiny import tiny_llava
from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset
from tpo.module import TPOModule
from tpo.query import QueryWords
from tpo.stages import get_stage

HEADS = {"box": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64}}


def test_adds_the_normalised_bag_at_the_task_embeddings_norm():
    words = QueryWords(vocab_size=6, embed_dim=2)
    with torch.no_grad():
        words.words.weight.copy_(torch.tensor([[9.0, 9.0], [1, 0], [0, 1], [3, 4], [0, 0], [5, 5]]))
    embeds = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    ids = torch.tensor([[1, 2, 0], [3, 5, 5], [0, 0, 0]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    out = words(embeds, ids, mask)
    # sample 0: rows 1 + 2 = (1, 1) -> unit (0.7071, 0.7071) times |(3, 4)| = 5
    # sample 1: row 3 = (3, 4) -> (0.6, 0.8) times 1; sample 2: no word, unchanged
    expected = torch.tensor([[3 + 5 / 2**0.5, 4 + 5 / 2**0.5], [1.6, 0.8], [0.0, 2.0]])
    torch.testing.assert_close(out, expected)


def test_gradients_reach_the_word_table_and_the_task_embeddings():
    words = QueryWords(vocab_size=10, embed_dim=8)
    embeds = torch.randn(3, 8, requires_grad=True)
    ids = torch.randint(0, 10, (3, 4))
    out = words(embeds, ids, torch.ones(3, 4, dtype=torch.bool))
    out.pow(2).sum().backward()
    assert embeds.grad.abs().sum() > 0
    rows = words.words.weight.grad.abs().sum(1)
    unused = torch.ones(10, dtype=torch.bool)
    unused[ids.unique()] = False
    assert (rows[ids.unique()] > 0).all() and (rows[unused] == 0).all()


def test_bad_token_ids_and_shapes_are_named():
    words = QueryWords(vocab_size=5, embed_dim=4)
    with pytest.raises(ValueError, match=r"query_ids: token ids must lie in \[0, 5\)"):
        words(torch.randn(1, 4), torch.tensor([[7]]), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="query_mask"):
        words(torch.randn(1, 4), torch.tensor([[1, 2]]), torch.ones(1, 3, dtype=torch.bool))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, n_videos=8, size=32, num_frames=8, seed=4)
    return root


def _box_batch(root, backbone):
    dm = MultiTaskDataModule.from_synthetic(root, backbone=backbone, tasks=("box",), batch_size=4,
                                            num_frames=8, seed=0)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_collator_tokenises_each_items_query_on_its_own(synthetic):
    backbone = tiny_llava("llava")
    batch = _box_batch(synthetic, backbone)
    tok = backbone.tokenizer
    for b in range(batch["input_ids"].shape[0]):
        ids = batch["query_ids"][b][batch["query_mask"][b]].tolist()
        query = tok.decode(ids).strip()
        assert query.startswith("the ") and query in tok.decode(batch["input_ids"][b])


def test_module_heads_read_the_query_words(synthetic):
    module = TPOModule(backbone=tiny_llava("llava"), heads=HEADS, stage="stage3", query_words=True)
    module.eval()
    batch = _box_batch(synthetic, module.backbone)
    groups = {g["name"]: g["params"] for g in get_stage("stage3").param_groups(module)}
    assert any(p is module.query_words.words.weight for p in groups["heads"])
    with torch.no_grad():
        out = module.backbone(batch)
        boxes = module.run_heads(batch, out)["box"][0].boxes
        swapped = dict(batch, query_ids=batch["query_ids"].roll(1, dims=0),
                       query_mask=batch["query_mask"].roll(1, dims=0))
        moved = module.run_heads(swapped, out)["box"][0].boxes
    assert not torch.allclose(boxes, moved)  # other words, other boxes; the LLM output is the same
    without = {k: v for k, v in batch.items() if k not in ("query_ids", "query_mask")}
    with pytest.raises(ValueError, match="query_words is on but the batch has no 'query_ids'"):
        module.run_heads(without, out)


def test_query_words_off_leaves_task_embeddings_as_the_llm_gives_them(synthetic):
    module = TPOModule(backbone=tiny_llava("llava"), heads=HEADS, stage="stage3")
    batch = _box_batch(synthetic, module.backbone)
    out = module.backbone(batch)
    gathered = out.tasks["box"]
    assert module.query_words is None
    assert torch.equal(module.head_embeddings(batch, gathered.embeds, gathered.batch_index), gathered.embeds)


def test_weight_scales_the_added_words_and_zero_returns_the_embeddings():
    words = QueryWords(vocab_size=6, embed_dim=4)
    embeds, ids = torch.randn(2, 4), torch.tensor([[1, 2], [3, 4]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    full = words(embeds, ids, mask) - embeds
    words.weight = 0.25
    torch.testing.assert_close(words(embeds, ids, mask) - embeds, 0.25 * full)
    words.weight = 0.0
    assert words(embeds, ids, mask) is embeds


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _fading(seconds: float = 10.0):
    """A QueryWordsFade on a fake clock over a stand-in module holding query words, started."""
    from types import SimpleNamespace

    from tpo.query import QueryWordsFade

    words = QueryWords(vocab_size=4, embed_dim=2)
    module = SimpleNamespace(query_words=words, model=SimpleNamespace(query_words=words))
    clock = _Clock()
    fade = QueryWordsFade(seconds=seconds, clock=clock)
    fade.on_train_start(None, module)
    return fade, module, words, clock


def test_fade_follows_the_clock_and_removes_the_table_at_zero():
    fade, module, words, clock = _fading()
    seen = []
    for now in (0.0, 2.5, 7.5, 10.0, 30.0):
        clock.now = now
        fade.on_train_batch_start(None, module, None, 0)
        seen.append(words.weight)
    assert seen == [1.0, 0.75, 0.25, 0.0, 0.0]
    fade.on_train_end(None, module)
    assert module.model.query_words is None


def test_fade_keeps_the_table_when_training_stops_before_it_ends():
    from types import SimpleNamespace

    fade, module, words, clock = _fading()
    clock.now = 4.0
    fade.on_train_batch_start(None, module, None, 0)
    fade.on_train_end(None, module)
    assert module.model.query_words is words and words.weight == pytest.approx(0.6)
    with pytest.raises(ValueError, match="no query words to fade"):
        fade.on_train_start(None, SimpleNamespace(query_words=None))
