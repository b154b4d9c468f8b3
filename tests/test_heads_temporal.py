"""TemporalGroundingHead and its criterion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tpo.heads import TemporalGroundingHead, TemporalGroundingOutput
from tpo.heads.base import sine_position_2d
from tpo.heads.temporal import clip_evidence_span
from tpo.losses import TemporalGroundingCriterion, saliency_from_spans, weighted
from tpo.ops.spans import span_cxw_to_se, temporal_iou

D, DV, T = 16, 12, 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _head(**kwargs) -> TemporalGroundingHead:
    options = dict(
        embed_dim=D,
        video_dim=DV,
        num_queries=5,
        hidden_dim=32,
        num_heads=4,
        dim_feedforward=64,
        dropout=0.0,
    )
    options.update(kwargs)
    return TemporalGroundingHead(**options)


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    task = torch.randn(4, D, generator=generator)
    video = torch.randn(4, T, DV, generator=generator)
    mask = torch.ones(4, T, dtype=torch.bool)
    mask[2, 9:] = False
    targets = [
        {"spans": torch.tensor([[0.3, 0.2]])},
        {"spans": torch.tensor([[0.2, 0.1], [0.7, 0.3]])},
        {"spans": torch.zeros(0, 2)},
        {"spans": torch.tensor([[0.5, 0.4]]), "saliency": torch.linspace(0, 1, T)},
    ]
    return task, video, mask, targets


@pytest.mark.slow
def test_overfits_one_batch():
    torch.manual_seed(0)
    head = _head()
    task, video, mask, targets = _batch()
    steps = 250
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for step in range(steps):
        total = sum(weighted(head.loss(head(task, video, mask), targets), head.weight_dict).values())
        if step == 0:
            first = total.item()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        schedule.step()
    assert total.item() <= 0.1 * first
    head.eval()
    predictions = head.postprocess(head(task, video, mask), [{"duration": 30.0}] * 4)
    for prediction, target in zip(predictions, targets, strict=True):
        gt = span_cxw_to_se(target["spans"]) * 30.0
        top = prediction.windows[: len(gt)]
        if len(gt) == 0:
            assert prediction.windows[0, 2] < 0.5
            continue
        assert (top[:, 2] > 0.5).all()
        assert (temporal_iou(gt, top[:, :2]).max(1).values >= 0.9).all()
    assert prediction.saliency.argmax() == T - 1


def test_gradients_reach_task_embeddings_from_every_term():
    torch.manual_seed(0)
    head = _head()
    task, video, mask, targets = _batch()
    task.requires_grad_(True)
    losses = head.loss(head(task, video, mask), targets)
    assert {"loss_span", "loss_giou", "loss_label", "loss_saliency", "loss_span_0"} <= set(losses)
    assert set(losses) == set(head.weight_dict)
    for name, value in losses.items():
        (grad,) = torch.autograd.grad(value, task, retain_graph=True)
        assert grad.abs().sum() > 0, name


def test_padding_does_not_change_valid_outputs():
    torch.manual_seed(0)
    head = _head().eval()
    task, video, mask, _ = _batch()
    noisy = video.clone()
    noisy[2, 9:] = torch.randn(T - 9, DV) * 100
    a, b = head(task, video, mask), head(task, noisy, mask)
    torch.testing.assert_close(a.spans, b.spans)
    torch.testing.assert_close(a.saliency[mask], b.saliency[mask])


def test_label_loss_equals_two_class_cross_entropy():
    torch.manual_seed(0)
    criterion = TemporalGroundingCriterion()
    logits = torch.randn(4, 5)
    spans = torch.rand(4, 5, 2) * 0.3 + 0.2
    _, _, mask, targets = _batch()
    output = TemporalGroundingOutput(spans, logits, torch.zeros(4, T), mask)
    got = criterion(output, targets)["loss_label"]
    classes = torch.ones(4, 5, dtype=torch.long)  # 1 = no object
    for b, (rows, _) in enumerate(criterion.matcher(logits, spans, targets)):
        classes[b, rows] = 0
    two_class = torch.stack((logits, torch.zeros_like(logits)), dim=1)  # (B, 2, Q)
    reference = F.cross_entropy(two_class, classes, weight=torch.tensor([1.0, 0.1]))
    torch.testing.assert_close(got, reference)


def test_saliency_loss_against_loop():
    torch.manual_seed(0)
    criterion = TemporalGroundingCriterion(saliency_margin=0.2)
    scores = torch.randn(2, 5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    labels = [torch.tensor([0.0, 2.0, 1.0, 0.0, 3.0]), torch.tensor([1.0, 0.0, 0.0, 5.0, 5.0])]
    targets = [{"spans": torch.zeros(0, 2), "saliency": s} for s in labels]
    per_sample = []
    for b in range(2):
        terms = [
            max(0.0, 0.2 - (scores[b, i] - scores[b, j]).item())
            for i in range(5)
            for j in range(5)
            if mask[b, i] and mask[b, j] and labels[b][i] > labels[b][j]
        ]
        per_sample.append(sum(terms) / len(terms))
    got = criterion.saliency_loss(scores, mask, targets)
    assert got.item() == pytest.approx(sum(per_sample) / 2, rel=1e-6)


def test_saliency_from_spans_hand_computed():
    span = torch.tensor([[0.375, 0.25]])  # [0.25, 0.5]
    full = torch.ones(4, dtype=torch.bool)
    assert saliency_from_spans(span, full).tolist() == [0.0, 1.0, 0.0, 0.0]
    half = torch.tensor([True, True, False, False])  # clip centers 0.25, 0.75
    assert saliency_from_spans(span, half).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_clip_loss_hand_computed_over_valid_clips():
    criterion = TemporalGroundingCriterion()
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 0.0, 9.0, 9.0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    targets = [{"spans": torch.tensor([[0.375, 0.25]])}, {"spans": torch.zeros(0, 2)}]  # clip 1 of 4
    labels = [[0, 1, 0, 0], [0, 0]]

    def bce(x: float, y: int) -> float:
        p = 1 / (1 + torch.exp(torch.tensor(-x)).item())
        return -(y * torch.log(torch.tensor(p)) + (1 - y) * torch.log(torch.tensor(1 - p))).item()

    terms = [bce(logits[b, t].item(), y) for b in range(2) for t, y in enumerate(labels[b])]
    got = criterion.clip_loss(logits, mask, targets)
    assert got.item() == pytest.approx(sum(terms) / 6, rel=1e-6)
    output = TemporalGroundingOutput(torch.rand(2, 3, 2) * 0.2 + 0.3, torch.zeros(2, 3), logits, mask)
    assert criterion.counts(output, targets)["clips"].item() == 6
    output.clip_logits = logits
    doubled = {**criterion.counts(output, targets), "clips": torch.tensor(12.0)}
    halved = criterion(output, targets, normalizers=doubled)
    assert halved["loss_clip"].item() == pytest.approx(got.item() / 2, rel=1e-6)


def test_clip_loss_trains_the_frame_pooling_not_the_encoder():
    torch.manual_seed(0)
    head = _head()
    task, _, mask, targets = _batch()
    tokens = torch.randn(4, T, 4, DV)
    task.requires_grad_(True)
    loss = head.loss(head(task, tokens, mask), targets)["loss_clip"]
    loss.backward()
    for module in (head.frame_attn, head.task_proj, head.clip_query, head.video_proj):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert task.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.encoder.parameters())
    assert all(p.grad is None for p in head.span_head.parameters())


def test_clip_evidence_span_hand_computed():
    certain = torch.tensor([[-30.0, 30.0, 30.0, -30.0, 5.0, 5.0]])
    mask = torch.tensor([[True, True, True, True, False, False]])
    torch.testing.assert_close(clip_evidence_span(certain, mask), torch.tensor([[0.5, 0.5]]))
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    p = logits.sigmoid()[0]
    x = torch.tensor([1 / 6, 3 / 6, 5 / 6])
    expected = torch.tensor([[(p * x).sum() / p.sum(), p.sum() / 3]])
    torch.testing.assert_close(clip_evidence_span(logits, torch.ones(1, 3, dtype=torch.bool)), expected)
    everything = torch.full((1, 3), 30.0)
    assert clip_evidence_span(everything, torch.ones(1, 3, dtype=torch.bool))[0, 1].item() == 1.0


def test_decoder_spans_start_from_the_clip_evidence_anchor():
    torch.manual_seed(0)
    head = _head(num_decoder_layers=2).eval()
    task, video, mask, _ = _batch()
    last = head.span_head.layers[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    output = head(task, video, mask)
    anchor = clip_evidence_span(output.clip_logits, mask).clamp(1e-3, 1 - 1e-3)
    for spans, _ in (*output.aux, (output.spans, output.logits)):
        torch.testing.assert_close(spans, anchor[:, None].expand_as(spans))


def test_no_targets_only_label_and_clip_terms_are_nonzero():
    torch.manual_seed(0)
    head = _head()
    task, video, mask, _ = _batch()
    empty = [{"spans": torch.zeros(0, 2)} for _ in range(4)]
    losses = head.loss(head(task, video, mask), empty)
    assert losses["loss_span"].item() == 0 and losses["loss_giou"].item() == 0
    assert losses["loss_saliency"].item() == 0
    assert losses["loss_label"].item() > 0 and losses["loss_clip"].item() > 0
    assert all(value.requires_grad for value in losses.values())  # in the graph without a `* 0` term


def test_weight_dict_has_paper_weights_for_every_decoder_layer():
    head = _head(num_decoder_layers=3)
    spans, giou, label = 10.0, 1.0, 4.0  # Moment-DETR
    expected = {"loss_saliency": 1.0, "loss_clip": 1.0}
    for s in ("", "_0", "_1"):
        expected.update({f"loss_span{s}": spans, f"loss_giou{s}": giou, f"loss_label{s}": label})
    assert head.weight_dict == expected
    task, video, mask, targets = _batch()
    terms = head.loss(head(task, video, mask), targets)
    scaled = weighted(terms, head.weight_dict)
    for name, value in terms.items():
        torch.testing.assert_close(scaled[name], expected[name] * value)
    criterion = TemporalGroundingCriterion(weight_span=5.0, num_aux_layers=2)
    assert _head(num_decoder_layers=3, criterion=criterion).weight_dict["loss_span_1"] == 5.0
    with pytest.raises(ValueError, match=r"criterion: weighs 0 auxiliary decoder layers"):
        _head(criterion=TemporalGroundingCriterion())
    output = head(task, video, mask)
    output.aux = output.aux[:1]
    with pytest.raises(ValueError, match=r"output.aux: 1 auxiliary decoder outputs"):
        head.loss(output, targets)


def test_postprocess_seconds_sorted_clamped_and_nms():
    spans = torch.tensor([[[0.5, 0.2], [0.95, 0.2], [0.52, 0.2]]])
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    output = TemporalGroundingOutput(spans, logits, torch.zeros(1, 4), torch.ones(1, 4, dtype=bool))
    (prediction,) = _head().postprocess(output, [{"duration": 10.0}])
    expected = [[8.5, 10.0], [4.0, 6.0], [4.2, 6.2]]  # 8.5..10.5 clamped to the duration
    torch.testing.assert_close(prediction.windows[:, :2], torch.tensor(expected))
    assert prediction.windows[:, 2].tolist() == sorted(prediction.windows[:, 2].tolist())[::-1]
    (nms,) = _head(nms_threshold=0.5).postprocess(output, [{"duration": 10.0}])
    torch.testing.assert_close(nms.windows[:, :2], torch.tensor(expected[:2]))


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        (torch.tensor([[0.5, -0.2]]), r"targets\[1\]\['spans'\]: span 0 has start"),
        (torch.tensor([[0.9, 0.4]]), r"targets\[1\]\['spans'\]: span 0 .* outside"),
    ],
)
def test_bad_targets_raise(spans, message):
    head = _head()
    task, video, mask, targets = _batch()
    targets[1] = {"spans": spans}
    with pytest.raises(ValueError, match=message):
        head.loss(head(task, video, mask), targets)


def test_bad_inputs_raise():
    head = _head()
    task, video, mask, targets = _batch()
    with pytest.raises(ValueError, match="video"):
        head(task, video[:3], mask)
    with pytest.raises(ValueError, match="video_mask"):
        head(task, video, mask[:, :5])
    targets[3]["saliency"] = torch.zeros(T + 1)
    with pytest.raises(ValueError, match=r"targets\[3\]\['saliency'\]"):
        head.loss(head(task, video, mask), targets)
    with pytest.raises(ValueError, match=r"meta\[0\]"):
        head.postprocess(head(task, video, mask), [{}])


def test_bf16_autocast():
    torch.manual_seed(0)
    head = _head()
    task, video, mask, targets = _batch()
    task.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = head(task, video, mask)
        total = sum(head.loss(output, targets).values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(task.grad).all()
    assert len(head.postprocess(output, [{"duration": 5.0}] * 4)) == 4


def test_per_frame_tokens_mean_pooled():
    head = _head(frame_pooling="mean").eval()
    task, video, mask, _ = _batch()
    tokens = video[:, :, None].expand(-1, -1, 3, -1)
    torch.testing.assert_close(head(task, tokens, mask).spans, head(task, video, mask).spans)


def test_per_frame_tokens_attention_pooled_by_the_task():
    """Attention pooling equals an independent per-frame softmax over the tokens, queried by the
    projected task embedding; the clip features depend on where a token is and on the task."""
    head = _head().eval()
    task, _, mask, _ = _batch()
    tokens = torch.randn(4, T, 6, DV)
    projected = head.task_proj(task) + head.task_type
    pooled = head._clip_features(tokens, projected, (2, 3))
    values = head.video_proj(tokens)
    keys = values + sine_position_2d(2, 3, 32)
    attn = head.frame_attn
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    q = (projected @ w_q.T + b_q).unflatten(-1, (4, 8))  # (B, heads, 8)
    k = (keys @ w_k.T + b_k).unflatten(-1, (4, 8))  # (B, T, N, heads, 8)
    v = (values @ w_v.T + b_v).unflatten(-1, (4, 8))
    weights = torch.einsum("bhc,btnhc->btnh", q, k).div(8**0.5).softmax(2)
    mixed = torch.einsum("btnh,btnhc->bthc", weights, v).flatten(2)
    expected = head.frame_norm(attn.out_proj(mixed) + values.mean(2))
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)
    swapped = tokens.clone()
    swapped[:, :, [0, 5]] = tokens[:, :, [5, 0]]
    assert not torch.allclose(head._clip_features(swapped, projected, (2, 3)), pooled)
    assert not torch.allclose(head._clip_features(tokens, projected.flip(0), (2, 3)), pooled.flip(0))
    assert head(task, tokens, mask, grid_size=(2, 3)).spans.shape == (4, 5, 2)
    with pytest.raises(ValueError, match="not a square grid"):
        head(task, tokens, mask)
    with pytest.raises(ValueError, match="frame_pooling"):
        _head(frame_pooling="max")
