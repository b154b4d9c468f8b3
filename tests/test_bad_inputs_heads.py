"""Bad-input corpus for the heads: every case raises a ``ValueError`` naming the tensor (and the
sample / frame) and what was expected, before any layer fails with its own shape error."""

from __future__ import annotations

import pytest
import torch

from tpo.heads import BoxHead, MaskHead, TemporalGroundingHead
from tpo.losses import weighted

D, DV, C, B, T = 16, 12, 8, 2, 6
NAN = float("nan")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    small = dict(hidden_dim=32, num_heads=4)
    return {
        "temporal": TemporalGroundingHead(embed_dim=D, video_dim=DV, num_queries=4, dim_feedforward=32,
                                          num_encoder_layers=1, num_decoder_layers=1, **small),
        "box": BoxHead(embed_dim=D, visual_dim=DV, num_layers=1, dim_feedforward=32, **small),
        "mask": MaskHead(embed_dim=D, image_dim=C, num_layers=1, mlp_dim=32, **small),
    }


@pytest.fixture(scope="module")
def outputs(heads):
    with torch.no_grad():
        return {
            "temporal": heads["temporal"](torch.randn(B, D), torch.randn(B, T, DV)),
            "box": heads["box"](torch.randn(B, D), torch.randn(B, 16, DV)),
            "mask": heads["mask"](torch.randn(B, D), torch.randn(B, 3, C, 4, 4)),  # masks 16x16
        }


def _spans(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def _temporal_targets(**changes):
    targets = [{"spans": _spans([0.3, 0.2])}, {"spans": _spans([0.6, 0.4]), "saliency": torch.ones(T)}]
    for b, target in changes.items():
        targets[int(b[1:])] = target
    return targets


def _masks(frames=3, height=16, width=16, dtype=torch.bool):
    return torch.zeros(B, frames, height, width, dtype=dtype)


def _with(t, index, value):
    t = t.clone()
    t[index] = value
    return t


BOX_TARGET = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.4, 0.2, 0.4]])

# (head, "forward" | "loss" | "postprocess", args, message)
CASES = [
    # ---------------------------------------------------------------- TemporalGroundingHead
    ("temporal", "forward", lambda: (torch.randn(B, D - 4), torch.randn(B, T, DV)),
     r"task_embeds: expected \(B, D\) with D = 16 \(the head's embed_dim\), got shape \(2, 12\), "
     r"i.e. D = 12"),
    ("temporal", "forward", lambda: (torch.randn(B, D), torch.randn(B, T, DV + 1)),
     r"video: expected \(2, T, D_v\) with D_v = 12 \(the head's video_dim\), got shape \(2, 6, 13\)"),
    ("temporal", "forward", lambda: (torch.randn(B, D), torch.randn(B, T, 4, DV - 2)),
     r"video: expected \(2, T, N, D_v\) with D_v = 12 \(the head's video_dim\), .*D_v = 10"),
    ("temporal", "forward", lambda: (torch.randn(B, D), torch.randn(B + 1, T, DV)),
     r"video: expected \(2, T, D_v\), got shape \(3, 6, 12\)"),
    ("temporal", "forward", lambda: (torch.randn(B, D), torch.randn(B, T, DV), torch.ones(B, T + 1).bool()),
     r"video_mask: expected \(2, 6\), got shape \(2, 7\)"),
    ("temporal", "forward", lambda: (torch.randn(B, D).tolist(), torch.randn(B, T, DV)),
     r"task_embeds: expected a tensor \(B, D\), got list"),
    ("temporal", "loss", lambda: _temporal_targets(
        t1={"spans": _spans([0.6, 0.4]), "saliency": torch.ones(T + 2)}),
     r"targets\[1\]\['saliency'\]: expected shape \(6,\), got \(8,\)"),
    ("temporal", "loss", lambda: _temporal_targets(t0={"spans": _spans([0.3, 0.2], [0.95, 0.3])}),
     r"targets\[0\]\['spans'\]: span 1 \(0.8, 1.1\) lies outside \[0, 1\]"),
    ("temporal", "loss", lambda: _temporal_targets(t1={"spans": _spans([NAN, 0.4])}),
     r"targets\[1\]\['spans'\]: span 0 is \[nan, 0.4.*\]; expected finite normalised"),
    ("temporal", "loss", lambda: _temporal_targets(t0={"spans": _spans([0.5, -0.2])}),
     r"targets\[0\]\['spans'\]: span 0 has start 0.6 > end 0.4"),
    ("temporal", "loss", lambda: _temporal_targets(
        t1={"spans": _spans([0.6, 0.4]), "saliency": _with(torch.ones(T), 2, NAN)}),
     r"targets\[1\]\['saliency'\]: clip 2 is nan; expected finite scores"),
    ("temporal", "loss", lambda: {"spans": _spans([0.3, 0.2])},
     r"targets: expected a list of 2 dicts, got dict"),
    ("temporal", "loss", lambda: [_spans([0.3, 0.2]), _spans([0.6, 0.4])],
     r"targets\[0\]: expected a dict with 'spans'"),
    ("temporal", "loss", lambda: _temporal_targets(t1={"saliency": torch.ones(T)}),
     r"targets\[1\]: missing key 'spans'"),
    ("temporal", "loss", lambda: _temporal_targets()[:1], r"targets: expected 2 dicts, got 1"),
    ("temporal", "postprocess", lambda: [{"duration": 10.0}, {"duration": NAN}],
     r"meta\[1\]\['duration'\]: expected > 0 seconds, got nan"),
    ("temporal", "postprocess", lambda: [{"duration": "ten"}] * 2,
     r"meta\[0\]\['duration'\]: expected seconds > 0, got 'ten'"),
    # ---------------------------------------------------------------- BoxHead
    ("box", "forward", lambda: (torch.randn(B, D + 1), torch.randn(B, 16, DV)),
     r"task_embeds: expected \(B, D\) with D = 16 \(the head's embed_dim\), got shape \(2, 17\), "
     r"i.e. D = 17"),
    ("box", "forward", lambda: (torch.randn(B, D + 1),),
     r"task_embeds: expected \(B, D\) with D = 16 \(the head's embed_dim\)"),
    ("box", "forward", lambda: (torch.randn(B, D), torch.randn(B, 16, 2 * DV)),
     r"visual: expected \(2, N, D_v\) with D_v = 12 \(the head's visual_dim\), got shape \(2, 16, 24\)"),
    ("box", "forward", lambda: (torch.randn(B, D), torch.randn(B, 16)),
     r"visual: expected \(2, N, D_v\), got shape \(2, 16\)"),
    ("box", "loss", lambda: {"boxes": _with(BOX_TARGET, (1, 0), NAN)},
     r"targets\['boxes'\]: box at sample 1 .* expected normalised \(cx, cy, w, h\)"),
    ("box", "loss", lambda: {"boxes": _with(BOX_TARGET, (0, 0), 0.95)},
     r"targets\['boxes'\]: box at sample 0 .*inside \[0, 1\]"),
    ("box", "loss", lambda: {"boxes": _with(BOX_TARGET, (1, 2), -0.1)},
     r"targets\['boxes'\]: box at sample 1 .*w > 0, h > 0"),
    ("box", "loss", lambda: {"boxes": BOX_TARGET[:1]},
     r"targets\['boxes'\]: expected \(2, 4\), got shape \(1, 4\)"),
    ("box", "loss", lambda: BOX_TARGET, r"targets: expected a dict with 'boxes'"),
    ("box", "postprocess", lambda: [{"image_size": (240, 320)}, {"image_size": (240,)}],
     r"meta\[1\]\['image_size'\]: expected \(height, width\) in pixels, got \(240,\)"),
    ("box", "postprocess", lambda: [{"image_size": (240, 0)}] * 2,
     r"meta\[0\]\['image_size'\]: expected whole \(height, width\) >= 1 pixels"),
    # ---------------------------------------------------------------- MaskHead
    ("mask", "forward", lambda: (torch.randn(B, D // 2), torch.randn(B, 3, C, 4, 4)),
     r"task_embeds: expected \(B, D\) with D = 16 \(the head's embed_dim\), got shape \(2, 8\), i.e. D = 8"),
    ("mask", "forward", lambda: (torch.randn(B, D), torch.randn(B, 3, C + 3, 4, 4)),
     r"image: expected \(2, T, C, h, w\) with C = 8 \(the head's image_dim\), got shape \(2, 3, 11, 4, 4\)"),
    ("mask", "forward", lambda: (torch.randn(B, D), torch.randn(B, C, 4, 4)),
     r"image: expected \(2, T, C, h, w\), got shape \(2, 8, 4, 4\)"),
    ("mask", "forward", lambda: (torch.randn(B, D), torch.randn(B, 3, C, 4, 4), [torch.zeros(1)] * 2),
     r"high_res: given, but the head was built without high_res_dims"),
    ("mask", "loss", lambda: {"masks": _masks(frames=4)},
     r"targets\['masks'\]: expected \(2, 3, H, W\), got shape \(2, 4, 16, 16\)"),
    ("mask", "loss", lambda: {"masks": _masks(width=20)},
     r"targets\['masks'\]: size 16x20 does not have the aspect ratio of the predicted masks 16x16"),
    ("mask", "loss", lambda: {"masks": _masks()[:1]},
     r"targets\['masks'\]: expected \(2, 3, H, W\), got shape \(1, 3, 16, 16\)"),
    ("mask", "loss", lambda: {"masks": _with(_masks(dtype=torch.float32), (0, 1, 2, 3), NAN)},
     r"targets\['masks'\]: sample 0, frame 1 holds nan at pixel \(2, 3\); expected bool"),
    ("mask", "loss", lambda: {"masks": _with(_masks(dtype=torch.float32), (1, 0, 0, 0), 0.5)},
     r"targets\['masks'\]: sample 1, frame 0 holds 0.5"),
    ("mask", "loss", lambda: _masks(), r"targets: expected a dict with 'masks'"),
    ("mask", "postprocess", lambda: [{"image_size": (32, 32)}, {}], r"meta\[1\]: missing key 'image_size'"),
    ("mask", "postprocess", lambda: [{"image_size": (32, 32.5)}] * 2,
     r"meta\[0\]\['image_size'\]: expected whole \(height, width\) >= 1 pixels"),
]


GOOD_TARGETS = {
    "temporal": _temporal_targets,
    "box": lambda: {"boxes": BOX_TARGET},
    "mask": lambda: {"masks": _masks()},
}


def test_weighted_names_the_term_without_a_weight(heads, outputs):
    terms = heads["box"].loss(outputs["box"], {"boxes": BOX_TARGET})
    missing = r"weight_dict: no weight for the loss terms \['loss_delta', 'loss_patch'\]"
    with pytest.raises(ValueError, match=missing):
        weighted(terms, {"loss_bbox": 5.0, "loss_giou": 2.0})


@pytest.mark.parametrize(("head", "method", "make", "message"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_raises_a_named_value_error(heads, outputs, head, method, make, message):
    module = heads[head]
    with pytest.raises(ValueError, match=message):
        if method == "forward":
            module(*make())
        elif method == "loss":
            module.loss(outputs[head], make())
        else:
            module.postprocess(outputs[head], make())


def test_good_inputs_still_pass(heads, outputs):
    assert set(heads["temporal"].loss(outputs["temporal"], _temporal_targets())) >= {"loss_span"}
    assert set(heads["box"].loss(outputs["box"], {"boxes": BOX_TARGET})) >= {"loss_bbox"}
    # same aspect ratio at another size is documented as resized, 0/1 float masks are bool masks
    assert set(heads["mask"].loss(outputs["mask"], {"masks": _masks(3, 32, 32, dtype=torch.float32)}))
    for name, head in heads.items():  # every term a head returns has a weight
        terms = head.loss(outputs[name], GOOD_TARGETS[name]())
        assert set(weighted(terms, head.weight_dict)) == set(terms), name
    one = type(outputs["box"])(boxes=outputs["box"].boxes[:1])
    (pred,) = heads["box"].postprocess(one, [{"image_size": (240, 320)}])
    assert pred.box_xyxy.shape == (4,)
