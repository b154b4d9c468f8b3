"""Format readers on fixtures written from each format's documentation, writer round trips, and
annotation errors that name the sample."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tpo.datamodules.formats import (
    activitynet,
    charades_sta,
    davis,
    got10k,
    lasot,
    llava,
    mevis,
    qvhighlights,
    refcoco,
    refytvos,
)
from tpo.datamodules.formats._frames import DAVIS_PALETTE, read_label_map, write_label_map
from tpo.datamodules.samples import ConversationSample, RefSample


def _jpg(path, h=24, w=32, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _palette_png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(DAVIS_PALETTE)
    image.save(path)


# ---------------------------------------------------------------------- moments
def test_charades_sta(tmp_path):
    (tmp_path / "charades_sta_test.txt").write_text(
        "3MSZA 24.3 30.4##person turn a light on.\n"
        "3MSZA 24.3 30.4##person flipped the light switch near the door.\n"
        "AO8RW 0.0 6.9##a person is putting a book on a shelf.\n")
    (tmp_path / "Charades_v1_test.csv").write_text(
        "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
        '3MSZA,HR43,Bedroom,6,7,Yes,"A person turns on a light.",light,"desc",c105 24.3 30.4,31.04\n'
        'AO8RW,XXN1,Kitchen,7,7,Yes,"A person puts a book.",book,"desc",c011 0.0 6.9,33.67\n')
    samples = charades_sta.read(tmp_path / "charades_sta_test.txt",
                                tmp_path / "Charades_v1_test.csv")
    assert [s.vid for s in samples] == ["3MSZA", "3MSZA", "AO8RW"]
    assert samples[1].query == "person flipped the light switch near the door."
    np.testing.assert_allclose(samples[2].windows, [[0.0, 6.9]])
    assert samples[0].duration == pytest.approx(31.04) and samples[2].qid == 2

    (tmp_path / "bad.txt").write_text("AO8RW 30.0 40.0##beyond the end.\n")
    with pytest.raises(ValueError, match=r"AO8RW \(qid 0\).*duration=33.67"):
        charades_sta.read(tmp_path / "bad.txt", {"AO8RW": 33.67})
    (tmp_path / "malformed.txt").write_text("AO8RW 3.0 no separator\n")
    with pytest.raises(ValueError, match="malformed.txt:1"):
        charades_sta.read(tmp_path / "malformed.txt", {"AO8RW": 33.67})


# the example row of Moment-DETR's data/README.md
QVH_ROW = {"qid": 8737, "query": "A family is playing basketball together on a green court "
           "outside.", "duration": 126, "vid": "bP5KfdFJzC4_660.0_810.0",
           "relevant_windows": [[0, 16]], "relevant_clip_ids": [0, 1, 2, 3, 4, 5, 6, 7],
           "saliency_scores": [[4, 1, 1], [4, 1, 1], [4, 2, 1], [4, 3, 2], [4, 3, 2], [4, 3, 3],
                               [4, 3, 3], [4, 3, 2]]}


def test_qvhighlights_read_and_round_trip(tmp_path):
    test_row = {"qid": 9, "query": "no labels in the test split", "duration": 150, "vid": "x_0_150"}
    path = tmp_path / "highlight_val_release.jsonl"
    path.write_text(json.dumps(QVH_ROW) + "\n" + json.dumps(test_row) + "\n")
    s, t = qvhighlights.read(path)
    assert s.qid == 8737 and s.duration == 126
    np.testing.assert_allclose(s.windows, [[0, 16]])
    assert s.saliency.shape == (63,)
    np.testing.assert_allclose(s.saliency[:8], [2, 2, 7 / 3, 3, 3, 10 / 3, 10 / 3, 3], rtol=1e-6)
    assert not s.saliency[8:].any()
    assert t.saliency is None and t.windows.shape == (0, 2)

    qvhighlights.write(tmp_path / "out.jsonl", [s, t])
    s2, t2 = qvhighlights.read(tmp_path / "out.jsonl")
    np.testing.assert_allclose(s2.saliency, s.saliency, rtol=1e-6)
    np.testing.assert_allclose(s2.windows, s.windows)
    assert (s2.qid, s2.vid, s2.query) == (s.qid, s.vid, s.query) and t2.saliency is None


def test_qvhighlights_rejects_windows_beyond_duration(tmp_path):
    row = dict(QVH_ROW, relevant_windows=[[120, 130]])
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"bP5KfdFJzC4_660.0_810.0 \(qid 8737\)"):
        qvhighlights.read(tmp_path / "bad.jsonl")


def test_qvhighlights_features(tmp_path):
    (tmp_path / "slowfast").mkdir()
    (tmp_path / "clip").mkdir()
    a = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    b = np.ones((5, 2), dtype=np.float32) * 3
    np.savez(tmp_path / "slowfast" / "v1.npz", features=a)
    np.save(tmp_path / "clip" / "v1.npy", b)
    feats = qvhighlights.load_video_features([tmp_path / "slowfast", tmp_path / "clip"], "v1")
    assert feats.shape == (4, 5)
    np.testing.assert_allclose(feats[:, :3], a / np.linalg.norm(a, axis=1, keepdims=True))
    np.testing.assert_allclose(feats[:, 3:], 1 / np.sqrt(2))
    with pytest.raises(FileNotFoundError, match="v2.npz"):
        qvhighlights.load_video_features([tmp_path / "slowfast"], "v2")


def test_activitynet(tmp_path):
    data = {"v_QOlSCBRmfWY": {
        "duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81], [56.26, 79.42]],
        "sentences": ["A young woman is seen standing in a room and leads into her dancing.",
                      "  The girl dances around the room while the camera captures her movements.",
                      " She continues dancing around the room and ends by laying on the floor."]}}
    (tmp_path / "val_1.json").write_text(json.dumps(data))
    samples = activitynet.read(tmp_path / "val_1.json")
    assert [s.qid for s in samples] == [f"v_QOlSCBRmfWY_{i}" for i in range(3)]
    assert samples[1].query.startswith("The girl dances")
    np.testing.assert_allclose(samples[2].windows, [[56.26, 79.42]])

    data["v_QOlSCBRmfWY"]["timestamps"][2] = [56.26, 83.5]
    (tmp_path / "over.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="v_QOlSCBRmfWY_2"):
        activitynet.read(tmp_path / "over.json")
    clamped = activitynet.read(tmp_path / "over.json", clamp=True)
    np.testing.assert_allclose(clamped[2].windows, [[56.26, 82.73]])


# ---------------------------------------------------------------------- referring expressions
def test_refcoco_through_pycocotools(tmp_path):
    instances = {
        "images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg",
                    "height": 480, "width": 640}],
        "annotations": [{"id": 1719310, "image_id": 581857, "category_id": 1, "iscrowd": 0,
                         "bbox": [103.93, 299.99, 134.22, 177.34], "area": 1000.0,
                         "segmentation": [[103.93, 299.99, 238.15, 299.99, 238.15, 477.33]]},
                        {"id": 9, "image_id": 581857, "category_id": 1, "iscrowd": 0,
                         "bbox": [600.0, 10.0, 60.0, 20.0], "area": 1200.0,
                         "segmentation": [[600, 10, 660, 10, 660, 30]]}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
    refs = [{"ref_id": 0, "ann_id": 1719310, "image_id": 581857, "split": "train",
             "category_id": 1, "sent_ids": [0, 1],
             "file_name": "COCO_train2014_000000581857_1719310.jpg",
             "sentences": [{"sent": "the lady with the blue shirt", "raw": "THE LADY with the "
                            "blue shirt", "tokens": ["the", "lady"], "sent_id": 0},
                           {"sent": "lady w back to us", "raw": "lady w back to us",
                            "tokens": ["lady"], "sent_id": 1}]},
            {"ref_id": 1, "ann_id": 1719310, "image_id": 581857, "split": "val",
             "category_id": 1, "sent_ids": [2], "file_name": "x.jpg",
             "sentences": [{"sent": "left woman", "raw": "left woman", "tokens": [],
                            "sent_id": 2}]}]
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    samples = refcoco.read(tmp_path / "refs(unc).p", tmp_path / "instances.json",
                           tmp_path / "train2014", split="train")
    assert [s.expression for s in samples] == ["the lady with the blue shirt", "lady w back to us"]
    np.testing.assert_allclose(samples[0].box_xyxy, [103.93, 299.99, 238.15, 477.33])
    assert samples[0].image.endswith("train2014/COCO_train2014_000000581857.jpg")
    assert samples[0].image_size == (480, 640) and samples[1].ref_id == "0/1"
    assert len(refcoco.read(tmp_path / "refs(unc).p", tmp_path / "instances.json", ".")) == 3

    refs[0]["ann_id"] = 9  # 600 + 60 > 640: outside the image
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    with pytest.raises(ValueError, match=r"ref 0/0\).*outside the 640x480 image"):
        refcoco.read(tmp_path / "refs(unc).p", tmp_path / "instances.json", ".")


def test_flat_grounding_json(tmp_path):
    rows = [{"id": "a", "image": "imgs/1.jpg", "expression": "red car", "bbox": [10, 20, 50, 60],
             "height": 100, "width": 200},
            {"id": "b", "image": "imgs/2.jpg", "expression": "dog", "bbox": [0.1, 0.2, 0.5, 0.6],
             "height": 100, "width": 200, "normalized": True}]
    (tmp_path / "grounding.json").write_text(json.dumps(rows))
    a, b = refcoco.read_flat(tmp_path / "grounding.json", tmp_path)
    np.testing.assert_allclose(a.box_xyxy, [10, 20, 50, 60])
    np.testing.assert_allclose(b.box_xyxy, [20, 20, 100, 60])
    assert a.image == str(tmp_path / "imgs/1.jpg")
    refcoco.write_flat(tmp_path / "out.json", [a, b], tmp_path)
    a2, b2 = refcoco.read_flat(tmp_path / "out.json", tmp_path)
    assert (a2.image, a2.expression, a2.image_size) == (a.image, a.expression, a.image_size)
    np.testing.assert_allclose(b2.box_xyxy, b.box_xyxy)
    with pytest.raises(ValueError, match=r"x.jpg \(ref 3\).*no area"):
        RefSample("x.jpg", "e", [5, 5, 5, 9], ref_id=3).validate()


# ---------------------------------------------------------------------- tracking
def test_lasot_layout(tmp_path):
    seq = tmp_path / "airplane" / "airplane-1"
    for i in range(4):
        _jpg(seq / "img" / f"{i + 1:08d}.jpg")
    (seq / "groundtruth.txt").write_text("1,2,10,8\n2,2,10,8\n0,0,0,0\n3,4,10,8\n")
    (seq / "full_occlusion.txt").write_text("0,0,1,0\n")
    (seq / "out_of_view.txt").write_text("0,0,0,1\n")
    (seq / "nlp.txt").write_text("white airplane landing on the ground\n")
    (tmp_path / "testing_set.txt").write_text("airplane-1\n")
    (s,) = lasot.read(tmp_path, tmp_path / "testing_set.txt")
    assert s.name == "airplane-1" and s.category == "airplane" and len(s.frames) == 4
    assert s.visible.tolist() == [True, True, False, False]
    np.testing.assert_allclose(s.boxes_xywh[1], [2, 2, 10, 8])
    assert s.description == "white airplane landing on the ground" and s.image_size == (24, 32)
    assert s.fps == 30

    (seq / "groundtruth.txt").write_text("1,2,10,8\n25,2,10,8\n0,0,0,0\n3,4,10,8\n")
    with pytest.raises(ValueError, match="airplane-1: frame 1 box.*outside the 32x24 frame"):
        lasot.read(tmp_path)


def test_lasot_and_got10k_writers_round_trip(tmp_path):
    ramp = np.linspace(0, 150, 32)[None, :, None] + np.zeros((24, 32, 3))
    frames = np.stack([ramp + 20 * t for t in range(5)]).astype(np.uint8)
    boxes = np.array([[1, 2, 10, 8], [2, 3, 10, 8], [0, 0, 0, 0], [5, 5, 6, 6], [6, 6, 6, 6.5]])
    visible = np.array([1, 1, 0, 1, 1], bool)
    s = lasot.write(tmp_path / "lasot", "cat-3", frames, boxes, visible, "a cat")
    assert s.visible.tolist() == visible.tolist() and s.description == "a cat"
    np.testing.assert_allclose(s.boxes_xywh, boxes)
    for split_seq in ("seqA", "seqB"):
        got10k.write(tmp_path / "got", "train", split_seq, frames, boxes, visible, "cat")
    a, b = got10k.read(tmp_path / "got", "train")
    assert (a.name, b.name) == ("seqA", "seqB") and a.category == "cat" and a.fps == 10
    assert a.visible.tolist() == visible.tolist()
    np.testing.assert_allclose(a.boxes_xywh, boxes)
    decoded = np.asarray(Image.open(a.frames[3]))
    assert np.abs(decoded.astype(int) - frames[3]).mean() < 3  # JPEG of the same frame


def test_got10k_layout(tmp_path):
    seq = tmp_path / "train" / "GOT-10k_Train_000001"
    for i in range(3):
        _jpg(seq / f"{i + 1:08d}.jpg")
    (seq / "groundtruth.txt").write_text("347.0000,443.0000,429.0000,272.0000\n"
                                         "0.0000,0.0000,10.0000,10.0000\n"
                                         "0.0000,0.0000,0.0000,0.0000\n")
    (seq / "absence.label").write_text("0\n0\n1\n")
    (seq / "cover.label").write_text("8\n8\n0\n")
    (seq / "meta_info.ini").write_text("[METAINFO]\nurl: x\nobject_class: ichneumon\n")
    (tmp_path / "train" / "list.txt").write_text("GOT-10k_Train_000001\n")
    with pytest.raises(ValueError, match="GOT-10k_Train_000001: frame 0 box"):
        got10k.read(tmp_path)
    (seq / "groundtruth.txt").write_text("3,4,20,10\n0,0,10,10\n0,0,0,0\n")
    (s,) = got10k.read(tmp_path)
    assert s.category == "ichneumon" and s.visible.tolist() == [True, True, False]
    (seq / "absence.label").write_text("1\n0\n1\n")
    with pytest.raises(ValueError, match="first frame"):
        got10k.read(tmp_path)


# ---------------------------------------------------------------------- segmentation
def test_davis_palette_masks_keep_absent_objects_empty(tmp_path):
    labels = np.zeros((3, 24, 32), np.uint8)
    labels[0, 2:6, 2:6] = 1
    labels[0, 10:14, 10:20] = 2
    labels[1, 3:7, 3:7] = 1          # object 2 absent in frame 1
    labels[2, 10:14, 10:20] = 2      # object 1 absent in frame 2
    labels[2, 0, 0] = 255            # void
    for t in range(3):
        _jpg(tmp_path / "JPEGImages" / "480p" / "bear" / f"{t:05d}.jpg")
        _palette_png(tmp_path / "Annotations" / "480p" / "bear" / f"{t:05d}.png", labels[t])
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    (s,) = davis.read(tmp_path, "val")
    assert callable(s.masks) and s.object_ids == [1, 2]
    masks = s.load_masks()
    assert masks.shape == (2, 3, 24, 32)
    assert np.array_equal(masks[0], labels == 1) and np.array_equal(masks[1], labels == 2)
    assert not masks[1, 1].any() and not masks[0, 2].any()
    assert Image.open(tmp_path / "Annotations/480p/bear/00000.png").mode == "P"

    davis.write(tmp_path / "out", "bear", np.zeros((3, 24, 32, 3), np.uint8), labels, split="val")
    (s2,) = davis.read(tmp_path / "out", "val", lazy=False)
    assert np.array_equal(s2.masks, masks)


def test_refytvos_expressions_and_empty_objects(tmp_path):
    labels = np.zeros((2, 24, 32), np.uint8)
    labels[0, 1:5, 1:5] = 1
    labels[1, 2:6, 2:6] = 1
    names = refytvos.write_video(tmp_path, "train", "003234408d",
                                 np.zeros((2, 24, 32, 3), np.uint8), labels)
    assert names == ["00000", "00005"]
    meta = {"videos": {"003234408d": {"expressions": {
        "0": {"exp": "a penguin is on the left in the front", "obj_id": "1"},
        "1": {"exp": "a penguin that is not there", "obj_id": "3"}}, "frames": names}}}
    (tmp_path / "meta_expressions" / "train").mkdir(parents=True)
    (tmp_path / "meta_expressions/train/meta_expressions.json").write_text(json.dumps(meta))
    ok, empty = refytvos.read(tmp_path, "train")
    assert ok.name == "003234408d/0" and ok.expression.startswith("a penguin is on the left")
    assert np.array_equal(ok.load_masks()[0], labels == 1)
    with pytest.raises(ValueError, match="003234408d/1: object 3 has an empty mask in every"):
        empty.load_masks()
    with pytest.raises(ValueError, match="003234408d/1"):
        refytvos.read(tmp_path, "train", lazy=False)

    refytvos.write_meta(tmp_path / "w", "train",
                        {"v": (names, {"0": ("the thing", 1)})})
    written = json.loads((tmp_path / "w/meta_expressions/train/meta_expressions.json").read_text())
    assert written == {"videos": {"v": {"expressions": {"0": {"exp": "the thing", "obj_id": "1"}},
                                        "frames": names}}}


def test_mevis_rle_masks(tmp_path):
    split = tmp_path / "train"
    frames = ["00000", "00001", "00002"]
    for f in frames:
        _jpg(split / "JPEGImages" / "vidA" / f"{f}.jpg")
    m = np.zeros((3, 24, 32), np.uint8)
    m[0, 2:8, 3:9] = 1
    m[2, 5:9, 5:9] = 1

    def rle(x):
        r = mask_utils.encode(np.asfortranarray(x))
        return {"size": r["size"], "counts": r["counts"].decode()}

    other = np.zeros((24, 32), np.uint8)
    other[10:20, 10:20] = 1
    mask_dict = {"7": [rle(m[0]), None, rle(m[2])], "8": [rle(other), rle(other), rle(other)],
                 "9": [None, None, None]}
    meta = {"videos": {"vidA": {"expressions": {
        "0": {"exp": "two animals", "obj_id": [0, 1], "anno_id": [7, 8]},
        "1": {"exp": "a ghost", "obj_id": [2], "anno_id": [9]}}, "frames": frames}}}
    (split / "mask_dict.json").write_text(json.dumps(mask_dict))
    (split / "meta_expressions.json").write_text(json.dumps(meta))
    two, ghost = mevis.read(tmp_path, "train")
    masks = two.load_masks()
    assert masks.shape == (2, 3, 24, 32) and two.object_ids == [0, 1]
    assert np.array_equal(masks[0], m.astype(bool)) and not masks[0, 1].any()
    assert np.array_equal(masks[1, 1], other.astype(bool))
    with pytest.raises(ValueError, match="vidA/1: object 2 has an empty mask in every frame"):
        ghost.load_masks()


def test_label_map_reader_rejects_rgb(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png"):
        read_label_map(tmp_path / "rgb.png")
    write_label_map(tmp_path / "l.png", np.array([[0, 1], [2, 255]]))
    assert read_label_map(tmp_path / "l.png").tolist() == [[0, 1], [2, 255]]


# ---------------------------------------------------------------------- conversations
def test_llava_json(tmp_path):
    rows = [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
        {"id": "v1", "video": "clips/v1.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat happens?"},
            {"from": "gpt", "value": "A dog runs."}]}]
    (tmp_path / "llava.json").write_text(json.dumps(rows))
    image, video = llava.read(tmp_path / "llava.json", tmp_path)
    assert image.kind == "image" and image.media == str(tmp_path / rows[0]["image"])
    assert len(image.conversations) == 4 and video.kind == "video"
    llava.write(tmp_path / "out.json", [image, video], tmp_path)
    assert json.loads((tmp_path / "out.json").read_text()) == rows
    with pytest.raises(ValueError, match="sample x: turn 1"):
        ConversationSample(None, [{"from": "human", "value": "a"},
                                  {"from": "human", "value": "b"}], id="x").validate()
