"""``tpo eval davis`` / ``got10k`` against slow, independent reference implementations written here
(per-frame loops, SciPy dilation, pure-Python statistics) on synthetic folders this module writes,
and against the official evaluators when a local checkout is named:

- ``TPO_DAVIS2017_EVALUATION``: a checkout of davisvideochallenge/davis2017-evaluation (needs
  opencv, scikit-image, scipy, tqdm): ``DAVISEvaluation(root, "semi-supervised", "val")``;
- ``TPO_GOT10K_TOOLKIT``: a checkout of got-10k/toolkit (needs shapely, matplotlib, opencv, six,
  wget): ``ExperimentGOT10k(root, "val").report``.

Without them those tests are skipped (CI has no checkout); the official code is never vendored.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from tpo.metrics.cli import eval_got10k
from tpo.metrics.davis_eval import db_statistics, eval_davis

TOL = 1e-6
# index 0 black, every other index a distinct non-black colour
PALETTE = [0, 0, 0] + [c for i in range(1, 256) for c in (37 * i % 256, 91 * i % 256, 53 * i % 256 | 1)]


# ------------------------------------------------------------------- reference implementations


def ref_boundary(seg: np.ndarray) -> np.ndarray:
    """1-px boundary of an ``(H, W)`` bool mask: a pixel differing from its right, lower or
    lower-right neighbour, the image extended by edge replication (so the last row compares only
    to the right, the last column only downwards and the corner never counts)."""
    p = np.pad(seg, ((0, 1), (0, 1)), mode="edge")
    return (seg != p[:-1, 1:]) | (seg != p[1:, :-1]) | (seg != p[1:, 1:])


def ref_f(pred: np.ndarray, gt: np.ndarray) -> float:
    """Boundary F-measure of one frame with a digital disk of radius ceil(0.008 * diagonal)."""
    radius = math.ceil(0.008 * math.hypot(*gt.shape))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = yy ** 2 + xx ** 2 <= radius ** 2
    fb, gb = ref_boundary(pred), ref_boundary(gt)
    n_fg, n_gt = int(fb.sum()), int(gb.sum())
    if n_fg == 0 or n_gt == 0:
        precision, recall = (1.0 if n_fg == 0 else 0.0), (1.0 if n_gt == 0 else 0.0)
    else:
        precision = int((fb & binary_dilation(gb, disk)).sum()) / n_fg
        recall = int((gb & binary_dilation(fb, disk)).sum()) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def ref_j(pred: np.ndarray, gt: np.ndarray) -> float:
    union = int((pred | gt).sum())
    return 1.0 if union == 0 else int((pred & gt).sum()) / union


def ref_stats(values: list[float]) -> tuple[float, float, float]:
    """Mean, recall (> 0.5) and decay with davis2017's bins: bounds round(1 + i (n - 1) / 4) - 1
    for i = 0..4; bin i runs from bound i to bound i+1 inclusive, in uint8 arithmetic (NumPy 2):
    a bound and the end just past it are kept modulo 256."""
    n = len(values)
    bounds = [math.floor(1 + i * (n - 1) / 4 + 0.5 + 1e-10) - 1 for i in range(5)]
    first = values[bounds[0] % 256:(bounds[1] % 256 + 1) % 256]
    last = values[bounds[3] % 256:(bounds[4] % 256 + 1) % 256]
    decay = sum(first) / len(first) - sum(last) / len(last) if first and last else math.nan
    return sum(values) / n, sum(v > 0.5 for v in values) / n, decay


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def ref_davis(results: Path, root: Path, split: str = "val") -> dict:
    """The DAVIS 2017 semi-supervised protocol, one frame and one object at a time."""
    names = [n.strip() for n in (root / "ImageSets/2017" / f"{split}.txt").read_text().split("\n")
             if n.strip()]
    per_object, stats = {}, {"J": [], "F": []}
    for seq in names:
        annotations = sorted((root / "Annotations/480p" / seq).glob("*.png"))
        first = read_png(annotations[0])
        n_objects = int(np.where(first == 255, 0, first).max())
        j = {k: [] for k in range(1, n_objects + 1)}
        f = {k: [] for k in range(1, n_objects + 1)}
        for anno in annotations[1:-1]:
            gt = read_png(anno)
            pred = read_png(results / seq / anno.name)
            for k in j:
                j[k].append(ref_j(pred == k, gt == k))
                f[k].append(ref_f(pred == k, gt == k))
        for k in j:
            stats["J"].append(ref_stats(j[k]))
            stats["F"].append(ref_stats(f[k]))
            per_object[f"{seq}_{k}"] = (stats["J"][-1][0], stats["F"][-1][0])
    out = {}
    for m in ("J", "F"):
        for i, s in enumerate(("Mean", "Recall", "Decay")):
            out[f"{m}-{s}"] = sum(v[i] for v in stats[m]) / len(stats[m])
    out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2
    return {"global": out, "objects": per_object}


# ---------------------------------------------------------------------------- synthetic data


def write_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(PALETTE)
    image.save(path)


def ellipses(seed: int, t: int, h: int, w: int, objects: int, jitter: float = 0.0,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """``(t, h, w)`` uint8 labels: ellipses 1..objects (later ones on top) moving along tracks
    drawn from ``seed``; ``jitter`` px of noise (from ``rng``) on their centres and radii."""
    tracks = np.random.default_rng(seed)
    centres = tracks.uniform(0.25, 0.75, (objects, 2)) * (h, w)
    speed = tracks.uniform(-2, 2, (objects, 2))
    radii = tracks.uniform(0.12, 0.3, (objects, 2)) * (h, w)
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((t, h, w), dtype=np.uint8)
    for i in range(t):
        for k in range(objects):
            noise = rng.normal(0, jitter, 4) if jitter else np.zeros(4)
            cy, cx = centres[k] + i * speed[k] + noise[:2]
            ry, rx = radii[k] + noise[2:] / 2
            labels[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = k + 1
    return labels


#: (name, frames, height, width, objects): odd sizes, widths across 64-bit words
SEQUENCES = [("alpha", 7, 37, 53, 2), ("bravo", 9, 48, 130, 3), ("charlie", 5, 30, 70, 1),
             ("delta", 12, 41, 66, 4)]


def write_davis(root: Path, results: Path, seed: int = 0) -> None:
    """A DAVIS 2017 val split and results: void regions, objects absent from some frames, ids
    beyond the first frame's objects in later annotations (ignored), empty result frames, an
    object never predicted and speckle noise."""
    rng = np.random.default_rng(seed)
    for n, (seq, t, h, w, k) in enumerate(SEQUENCES):
        gt = ellipses(seed + n, t, h, w, k)
        gt[:, :2, :3] = 255
        gt[2][gt[2] == 1] = 0  # object 1 absent from frame 2
        if k > 1:
            gt[3:5][gt[3:5] == k] = 0
            gt[t - 2, -4:, -4:] = k + 1  # not in the first frame: not an object
        pred = ellipses(seed + n, t, h, w, k, 1.5, rng)
        pred[1] = 0  # an empty result frame
        pred[rng.random(pred.shape) < 0.01] = rng.integers(0, k + 1)
        if seq == "delta":
            pred[pred == 3] = 0  # object 3 never predicted
        for i in range(t):
            Image.fromarray(np.full((h, w, 3), 40 * i % 255, np.uint8)).save(
                _mkdir(root / "JPEGImages/480p" / seq) / f"{i:05d}.jpg")
            write_png(root / "Annotations/480p" / seq / f"{i:05d}.png", gt[i])
            if 0 < i < t - 1:  # the official evaluator reads the scored frames only
                write_png(results / seq / f"{i:05d}.png", pred[i])
    _mkdir(root / "ImageSets/2017")
    (root / "ImageSets/2017/val.txt").write_text("".join(s[0] + "\n" for s in SEQUENCES))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def davis_folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("davis")
    write_davis(tmp / "DAVIS", tmp / "results")
    return tmp / "results", tmp / "DAVIS"


# ------------------------------------------------------------------------- DAVIS, reference


def test_davis_matches_reference(davis_folders):
    results, root = davis_folders
    out = eval_davis(results, root)
    ref = ref_davis(results, root)
    for key, value in ref["global"].items():
        assert out[key] == pytest.approx(value, abs=TOL), key
    assert set(out["sequences"]) == set(ref["objects"])
    assert out["num_objects"] == sum(s[4] for s in SEQUENCES) and out["num_sequences"] == 4
    for name, (j, f) in ref["objects"].items():
        assert out["sequences"][name]["J-Mean"] == pytest.approx(j, abs=TOL), name
        assert out["sequences"][name]["F-Mean"] == pytest.approx(f, abs=TOL), name
    assert out["sequences"]["delta_3"]["J-Mean"] < 0.5  # never predicted: J = 0 where present
    assert 0.2 < out["J&F-Mean"] < 0.95


STAT_LENGTHS = [1, 2, 3, 5, 7, 50, 101, 255, 256, 257, 258, 300, 512, 600]


@pytest.mark.parametrize("n", STAT_LENGTHS)
def test_db_statistics_matches_reference(n):
    rng = np.random.default_rng(n)
    values = rng.uniform(0, 1, n)
    mean, recall, decay = db_statistics(values)
    ref = ref_stats(values.tolist())
    assert mean == pytest.approx(ref[0], abs=1e-12) and recall == pytest.approx(ref[1], abs=1e-12)
    assert (math.isnan(decay) and math.isnan(ref[2])) or decay == pytest.approx(ref[2], abs=1e-12)


def test_db_statistics_by_hand():
    # 9 frames: bins 0..2, 2..4, 4..6, 6..8 (bounds 0, 2, 4, 6, 8)
    values = np.array([1.0, 0.8, 0.6, 0.6, 0.5, 0.4, 0.2, 0.0, 0.1])
    mean, recall, decay = db_statistics(values)
    assert mean == pytest.approx(4.2 / 9) and recall == pytest.approx(4 / 9)
    assert decay == pytest.approx(0.8 - 0.1)
    # 258 frames: the last bound 257 wraps to 1 (uint8), the last bin is empty: NaN decay
    assert math.isnan(db_statistics(np.ones(258))[2])
    # 256 frames: the last bound is 255, the end past it 256 wraps to 0: NaN decay
    assert math.isnan(db_statistics(np.ones(256))[2])
    assert db_statistics(np.ones(255))[2] == 0.0


# ----------------------------------------------------------------- MeViS / Ref-YouTube-VOS


def write_mevis(root: Path, results: Path, seed: int = 1) -> dict:
    """A MeViS ``valid_u`` split: two videos, expressions over one or two objects (RLEs, null
    where absent) and results; returns ``{vid: {eid: anno_ids}}``."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    split = root / "valid_u"
    videos, mask_dict, layout = {}, {}, {}
    for v, (vid, t, h, w) in enumerate((("v1", 6, 36, 70), ("v2", 5, 44, 50))):
        gt = ellipses(seed + v, t, h, w, 2)
        pred_labels = ellipses(seed + v, t, h, w, 2, 2.0, rng)
        names = [f"{5 * i:05d}" for i in range(t)]
        for name in names:
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(_mkdir(split / "JPEGImages" / vid)
                                                                / f"{name}.jpg")
        for obj in (1, 2):
            rles = []
            for i in range(t):
                m = np.asfortranarray((gt[i] == obj).astype(np.uint8))
                if obj == 2 and i == 1 or not m.any():
                    rles.append(None)
                    continue
                rle = mask_utils.encode(m)
                rles.append({"size": rle["size"], "counts": rle["counts"].decode()})
            mask_dict[f"{vid}{obj}"] = rles
        expressions = {"0": ([f"{vid}1"], pred_labels == 1), "1": ([f"{vid}2"], pred_labels == 2),
                       "2": ([f"{vid}1", f"{vid}2"], pred_labels > 0)}
        videos[vid] = {"frames": names, "expressions": {
            eid: {"exp": f"expression {eid}", "obj_id": list(range(len(a))), "anno_id": a}
            for eid, (a, _) in expressions.items()}}
        layout[vid] = {eid: a for eid, (a, _) in expressions.items()}
        if vid == "v2":
            continue  # a video without results: J = F = 0
        for eid, (_, pred) in expressions.items():
            for i, name in enumerate(names):
                write_png(results / vid / eid / f"{name}.png", pred[i].astype(np.uint8) * (1 + i % 3))
    (split / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    (split / "mask_dict.json").write_text(json.dumps(mask_dict))
    return layout


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
def test_mevis_matches_reference(tmp_path):
    from pycocotools import mask as mask_utils

    layout = write_mevis(tmp_path / "mevis", tmp_path / "res")
    out = eval_davis(tmp_path / "res", tmp_path / "mevis")  # layout and split detected
    mask_dict = json.loads((tmp_path / "mevis/valid_u/mask_dict.json").read_text())
    meta = json.loads((tmp_path / "mevis/valid_u/meta_expressions.json").read_text())["videos"]
    scores = {}
    for vid, expressions in layout.items():
        for eid, anno_ids in expressions.items():
            if vid == "v2":
                scores[f"{vid}_{eid}"] = (0.0, 0.0)
                continue
            j, f = [], []
            for i, n in enumerate(meta[vid]["frames"]):
                pred = read_png(tmp_path / "res" / vid / eid / f"{n}.png") != 0
                gt = np.zeros_like(pred)
                for a in anno_ids:
                    if mask_dict[a][i]:
                        gt |= mask_utils.decode(mask_dict[a][i]).astype(bool)
                j.append(ref_j(pred, gt))
                f.append(ref_f(pred, gt))
            scores[f"{vid}_{eid}"] = (sum(j) / len(j), sum(f) / len(f))
    j_mean = sum(s[0] for s in scores.values()) / len(scores)
    f_mean = sum(s[1] for s in scores.values()) / len(scores)
    assert out["J-Mean"] == pytest.approx(j_mean, abs=TOL)
    assert out["F-Mean"] == pytest.approx(f_mean, abs=TOL)
    assert out["J&F-Mean"] == pytest.approx((j_mean + f_mean) / 2, abs=TOL)
    assert out["missing"] == ["v2"] and out["num_expressions"] == 6
    for name, (j, f) in scores.items():
        assert out["expressions"][name] == pytest.approx({"J": j, "F": f}, abs=TOL), name
    assert 0.3 < out["expressions"]["v1_2"]["J"] < 1


def test_refytvos_matches_reference(tmp_path):
    rng = np.random.default_rng(3)
    root, res = tmp_path / "rvos", tmp_path / "res"
    t, h, w = 5, 40, 72
    gt = ellipses(3, t, h, w, 2)
    pred = ellipses(3, t, h, w, 2, 2.5, rng)
    names = [f"{5 * i:05d}" for i in range(t)]
    for i, n in enumerate(names):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(_mkdir(root / "valid/JPEGImages/vid")
                                                            / f"{n}.jpg")
        write_png(root / "valid/Annotations/vid" / f"{n}.png", gt[i])
        for eid, obj in (("0", 1), ("1", 2)):
            write_png(res / "vid" / eid / f"{n}.png", (pred[i] == obj).astype(np.uint8) * 255)
    _mkdir(root / "meta_expressions/valid")
    (root / "meta_expressions/valid/meta_expressions.json").write_text(json.dumps({"videos": {
        "vid": {"frames": names, "expressions": {"0": {"exp": "a", "obj_id": "1"},
                                                 "1": {"exp": "b", "obj_id": "2"}}}}}))
    out = eval_davis(res, root, layout="refytvos")
    for eid, obj in (("0", 1), ("1", 2)):
        j = [ref_j(pred[i] == obj, gt[i] == obj) for i in range(t)]
        f = [ref_f(pred[i] == obj, gt[i] == obj) for i in range(t)]
        assert out["expressions"][f"vid_{eid}"]["J"] == pytest.approx(sum(j) / t, abs=TOL)
        assert out["expressions"][f"vid_{eid}"]["F"] == pytest.approx(sum(f) / t, abs=TOL)
    assert out["missing"] == []


# ------------------------------------------------------------------ official checkouts


def _official(env: str, module: str, what: str):
    """``module`` imported from the checkout named by ``$env``, or a skip saying why."""
    path = os.environ.get(env)
    if not path:
        pytest.skip(f"set {env} to a local checkout of {what} to compare with the official code")
    if not Path(path, module.split(".")[0]).is_dir():
        pytest.skip(f"{env}={path}: no {module.split('.')[0]}/ package there ({what})")
    sys.path.insert(0, path)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        pytest.skip(f"{what} at {path} does not import ({err}); install its dependencies")
    finally:
        sys.path.remove(path)


def _official_davis(results: Path, root: Path) -> dict:
    evaluation = _official("TPO_DAVIS2017_EVALUATION", "davis2017.evaluation",
                           "davisvideochallenge/davis2017-evaluation")
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        metrics = evaluation.DAVISEvaluation(str(root), "semi-supervised", "val").evaluate(
            str(results))
    out = {}
    for m in ("J", "F"):
        for key, s in (("M", "Mean"), ("R", "Recall"), ("D", "Decay")):
            out[f"{m}-{s}"] = float(np.mean(metrics[m][key]))
    out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2
    per_object = {name: (float(metrics["J"]["M_per_object"][name]),
                         float(metrics["F"]["M_per_object"][name]))
                  for name in metrics["J"]["M_per_object"]}
    return {"global": out, "objects": per_object}


def _max_diff(out: dict, ref: dict) -> float:
    diffs = [abs(out[k] - v) for k, v in ref["global"].items()]
    for name, (j, f) in ref["objects"].items():
        diffs += [abs(out["sequences"][name]["J-Mean"] - j), abs(out["sequences"][name]["F-Mean"] - f)]
    return max(diffs)


OFFICIAL_WARNINGS = pytest.mark.filterwarnings(  # the official db_eval_iou's 0 / 0, then set to 1
    "ignore:invalid value encountered in divide:RuntimeWarning")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # its uint8 bounds
@pytest.mark.parametrize("n", STAT_LENGTHS)
def test_db_statistics_matches_official(n):
    utils = _official("TPO_DAVIS2017_EVALUATION", "davis2017.utils",
                      "davisvideochallenge/davis2017-evaluation")
    values = np.random.default_rng(n).uniform(0, 1, n)
    ours, ref = db_statistics(values), utils.db_statistics(values)
    for a, b in zip(ours, ref, strict=True):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


@OFFICIAL_WARNINGS
def test_davis_matches_official(davis_folders):
    results, root = davis_folders
    ref = _official_davis(results, root)
    out = eval_davis(results, root)
    assert set(out["sequences"]) == set(ref["objects"])
    assert _max_diff(out, ref) <= TOL


@OFFICIAL_WARNINGS
def test_davis_long_sequence_decay_matches_official(tmp_path):
    """260 scored frames: the official uint8 bin bounds wrap, its decay is NaN; ours too."""
    rng = np.random.default_rng(7)
    root, res = tmp_path / "DAVIS", tmp_path / "res"
    t, h, w = 262, 12, 16
    gt = ellipses(7, t, h, w, 1)
    pred = ellipses(7, t, h, w, 1, 1.0, rng)
    for i in range(t):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(_mkdir(root / "JPEGImages/480p/long")
                                                            / f"{i:05d}.jpg")
        write_png(root / "Annotations/480p/long" / f"{i:05d}.png", gt[i])
        write_png(res / "long" / f"{i:05d}.png", pred[i])
    _mkdir(root / "ImageSets/2017")
    (root / "ImageSets/2017/val.txt").write_text("long\n")
    out = eval_davis(res, root)
    assert out["J-Decay"] is None and out["F-Decay"] is None
    ref = _official_davis(res, root)
    assert math.isnan(ref["global"]["J-Decay"]) and math.isnan(ref["global"]["F-Decay"])
    for key in ("J&F-Mean", "J-Mean", "J-Recall", "F-Mean", "F-Recall"):
        assert out[key] == pytest.approx(ref["global"][key], abs=TOL), key


# ------------------------------------------------------------------------------- GOT-10k


def write_got10k(root: Path, results: Path, seed: int = 0) -> None:
    """A GOT-10k val split as the toolkit reads it (``meta_info.ini`` with a resolution, all three
    label files, ``list.txt``) and results of one tracker ``results/GOT-10k/trk``: cover levels
    0-8, boxes leaving the image, two repetitions of one sequence, timing files."""
    rng = np.random.default_rng(seed)
    names = []
    for s, (n, w, h) in enumerate(((12, 64, 48), (9, 80, 40), (15, 50, 50))):
        name = f"GOT-10k_Val_{s + 1:06d}"
        names.append(name)
        seq = _mkdir(root / "val" / name)
        for i in range(n):
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(seq / f"{i + 1:08d}.jpg")
        wh = rng.uniform(8, 20, (n, 2))
        xy = rng.uniform(0, 1, (n, 2)) * ((w, h) - wh)
        gt = np.round(np.concatenate([xy, wh], 1), 4)
        cover = rng.integers(0, 9, n)
        cover[0] = 8
        np.savetxt(seq / "groundtruth.txt", gt, fmt="%.4f", delimiter=",")
        np.savetxt(seq / "cover.label", cover, fmt="%d")
        np.savetxt(seq / "absence.label", (cover == 0).astype(int), fmt="%d")
        np.savetxt(seq / "cut_by_image.label", np.zeros(n, int), fmt="%d")
        (seq / "meta_info.ini").write_text(f"[METAINFO]\nobject_class: thing\nresolution: ({w}, {h})\n")
        out = _mkdir(results / "GOT-10k" / "trk" / name)
        for r in range(1, 3 if s == 1 else 2):
            pred = gt + rng.normal(0, 4, gt.shape)
            pred[::4, :2] += (w, -h / 2)  # partly outside the image: clipped
            np.savetxt(out / f"{name}_{r:03d}.txt", pred, fmt="%.3f", delimiter=",")
        np.savetxt(out / f"{name}_time.txt", np.full(n, 0.02), fmt="%.8f")
    (root / "val/list.txt").write_text("\n".join(names) + "\n")


def test_got10k_matches_official(tmp_path):
    experiments = _official("TPO_GOT10K_TOOLKIT", "got10k.experiments", "got-10k/toolkit")
    write_got10k(tmp_path / "GOT10k", tmp_path / "results")
    out = eval_got10k(tmp_path / "results/GOT-10k/trk", tmp_path / "GOT10k")
    experiment = experiments.ExperimentGOT10k(str(tmp_path / "GOT10k"), subset="val",
                                              result_dir=str(tmp_path / "results"),
                                              report_dir=str(tmp_path / "reports"))
    with contextlib.redirect_stdout(io.StringIO()):
        report = experiment.report(["trk"], plot_curves=False)["trk"]
    overall = report["overall"]
    assert np.linspace(0, 1, 101)[75] == 0.75  # succ_curve[75] is SR@0.75
    diffs = [abs(out["AO"] - overall["ao"]), abs(out["SR@0.5"] - overall["sr"]),
             abs(out["SR@0.75"] - overall["succ_curve"][75])]
    for name, seq in report["seq_wise"].items():
        diffs += [abs(out["sequences"][name]["AO"] - seq["ao"]),
                  abs(out["sequences"][name]["SR@0.5"] - seq["sr"])]
    assert max(diffs) <= TOL
    assert 0.05 < out["AO"] < 0.95
