"""A corpus of realistic bad inputs to the video readers and the format readers/writers.

Each case writes the bad input in a tmp folder and asserts the error type and that its message
names the file (or sample, line, anno_id) and says what was expected. Writers must leave nothing
of a sequence they reject behind, so the split still reads.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
from collections.abc import Callable
from fractions import Fraction

import av
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
from tpo.datamodules.formats._frames import DAVIS_PALETTE
from tpo.datamodules.synthetic import write_h264
from tpo.datamodules.video import VideoDecodeError, VideoReader

BACKENDS = ("decord", "pyav")


def _frames(n: int = 20, size: int = 32) -> np.ndarray:
    frames = np.zeros((n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        frames[t, :, (3 * t) % size:(3 * t) % size + 6] = (250, 60 + 10 * t % 190, 30)
    return frames


def _faststart_h264(path: str, frames: np.ndarray, fps: int) -> None:
    """H.264 mp4 with the index (moov) before the data, as streaming downloads have it."""
    with av.open(path, "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    """A real 2 s clip (20 frames at 10 fps) and the bad files made from it."""
    root = tmp_path_factory.mktemp("bad_media")
    clip = str(root / "clip.mp4")
    write_h264(clip, _frames(), fps=10)
    data = open(clip, "rb").read()
    (root / "half.mp4").write_bytes(data[:len(data) // 2])  # moov (index) at the end: lost
    _faststart_h264(str(root / "stream.mp4"), _frames(), fps=10)
    fast = (root / "stream.mp4").read_bytes()
    (root / "stream_half.mp4").write_bytes(fast[:len(fast) // 2])  # index kept, data cut
    (root / "empty.mp4").write_bytes(b"")
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "notes.txt").write_text("x" * 5000)  # FFmpeg's tty demuxer takes this as a video
    (root / "readme.txt").write_text("clip.mp4: a person opens a door\n" * 20)
    (root / "banner.txt").write_text("\x1b[1;31m== RED ==\x1b[0m\n" * 300)  # ANSI escapes
    (root / "frames_dir").mkdir()
    (root / "frames_dir" / "labels.csv").write_text("id,label\n")
    (root / "folder.mp4").mkdir()
    return {p.name: str(p) for p in root.iterdir()} | {"missing.mp4": str(root / "missing.mp4")}


def _open(path: str, backend: str) -> Callable[[], object]:
    return lambda: VideoReader(path, backend=backend).sample(4)


VIDEO_CASES = {
    # name: (file, call on the reader, error type, substrings of the message)
    "missing path": ("missing.mp4", lambda r: len(r), FileNotFoundError,
                     ["missing.mp4", "not found"]),
    "zero-byte mp4": ("empty.mp4", lambda r: r.sample(4), VideoDecodeError,
                      ["empty.mp4", "empty (0 bytes)", "expected a video"]),
    "random bytes": ("noise.mp4", lambda r: r.sample(4), VideoDecodeError,
                     ["noise.mp4", "expected a video"]),
    "H.264 truncated to half": ("half.mp4", lambda r: r.sample(4), VideoDecodeError,
                                ["half.mp4", "expected a video"]),
    "faststart H.264 truncated to half": ("stream_half.mp4", lambda r: r.sample(4),
                                          VideoDecodeError, ["stream_half.mp4", "video"]),
    "directory without frames": ("frames_dir", lambda r: len(r), FileNotFoundError,
                                 ["frames_dir", "no image frames"]),
    "directory named .mp4": ("folder.mp4", lambda r: r.sample(2), FileNotFoundError,
                             ["folder.mp4", "no image frames"]),
    "text file FFmpeg reads as tty": ("notes.txt", lambda r: len(r), VideoDecodeError,
                                      ["notes.txt", "text file", "expected a video"]),
    "text annotation file": ("readme.txt", lambda r: r.sample(4), VideoDecodeError,
                             ["readme.txt", "text file"]),
    "ANSI-art text file": ("banner.txt", lambda r: r.sample(4), VideoDecodeError,
                           ["banner.txt", "video"]),
    "frame index past the end": ("clip.mp4", lambda r: r.get_frames([0, 20]), ValueError,
                                 ["clip.mp4", "[0, 20)"]),
    "range after the clip (count)": ("clip.mp4", lambda r: r.sample(4, start=5.0, end=6.0),
                                     ValueError, ["clip.mp4", "no frame", "2.000 s"]),
    "range after the clip (fps)": ("clip.mp4", lambda r: r.sample(fps=2, start=10, end=20),
                                   ValueError, ["clip.mp4", "no frame", "2.000 s"]),
    "fps range past the end": ("clip.mp4", lambda r: r.sample(fps=2, start=1, end=20),
                               ValueError, ["clip.mp4", "past the clip's end"]),
    "fps 0": ("clip.mp4", lambda r: r.sample(fps=0), ValueError, ["clip.mp4", "fps", "positive"]),
    "fps negative": ("clip.mp4", lambda r: r.sample(fps=-2), ValueError,
                     ["clip.mp4", "fps", "positive"]),
    "fps NaN": ("clip.mp4", lambda r: r.sample(fps=float("nan")), ValueError,
                ["clip.mp4", "fps", "finite"]),
    "inverted range (count)": ("clip.mp4", lambda r: r.sample(4, start=1.5, end=0.5), ValueError,
                               ["clip.mp4", "inverted", "start < end"]),
    "inverted range (fps)": ("clip.mp4", lambda r: r.sample(fps=4, start=1.5, end=0.5),
                             ValueError, ["clip.mp4", "inverted", "start < end"]),
    "negative start": ("clip.mp4", lambda r: r.sample(4, start=-1.0, end=1.0), ValueError,
                       ["clip.mp4", "start", ">= 0"]),
    "zero frames": ("clip.mp4", lambda r: r.sample(0), ValueError,
                    ["clip.mp4", "num_frames", "positive"]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_bad_video(media, case, backend):
    name, call, error, words = VIDEO_CASES[case]
    reader = VideoReader(media[name], backend=backend)
    with pytest.raises(error) as info:
        call(reader)
    for word in words:
        assert word in str(info.value), (case, backend, str(info.value))


def test_bad_video_auto_backend_and_frame_rate(media):
    # auto falls back from decord to PyAV: the error still names the file
    with pytest.raises(VideoDecodeError, match=r"stream_half\.mp4: truncated video"):
        VideoReader(media["stream_half.mp4"]).sample(4)
    with pytest.raises(ValueError, match=r"frames_dir: fps: expected a positive"):
        VideoReader(media["frames_dir"], fps=0)
    with pytest.raises(ValueError, match="finite frame rate"):
        VideoReader(media["frames_dir"], fps=float("inf"))
    # valid inputs still work
    reader = VideoReader(media["clip.mp4"])
    assert reader.sample(fps=2).indices.tolist() == [0, 5, 10, 15]
    assert reader.sample(fps=2, start=1.0, end=2.0).indices.tolist() == [10, 15]
    assert len(VideoReader(media["stream.mp4"], backend="pyav")) == 20


# ====================================================================== format readers
def _jpg(path, h=24, w=32, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    image.putpalette(DAVIS_PALETTE)
    image.save(path)


def _gzip(path, text: str) -> None:
    with gzip.open(path, "wt") as f:
        f.write(text)


# ---------------------------------------------------------------------- moments
def _charades(tmp, text, durations=None):
    (tmp / "charades_sta_test.txt").write_text(text)
    return lambda: charades_sta.read(tmp / "charades_sta_test.txt",
                                     durations or {"AO8RW": 33.67})


def _charades_csv(tmp):
    (tmp / "charades_sta_test.txt").write_text("AO8RW 0.0 6.9##a person.\n")
    (tmp / "Charades_v1_test.csv").write_text("id,length\n3MSZA,31.04\nAO8RW,thirty\n")
    return lambda: charades_sta.read(tmp / "charades_sta_test.txt",
                                     tmp / "Charades_v1_test.csv")


QVH = {"qid": 8737, "query": "A family is playing basketball.", "duration": 126,
       "vid": "bP5KfdFJzC4_660.0_810.0", "relevant_windows": [[0, 16]],
       "relevant_clip_ids": [0, 1], "saliency_scores": [[4, 1, 1], [4, 2, 1]]}


def _qvh(tmp, *lines, name="highlight_val.jsonl"):
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    (tmp / name).write_text(text)
    return lambda: qvhighlights.read(tmp / name)


def _qvh_gzip(tmp, truncated):
    data = gzip.compress((json.dumps(QVH) + "\n").encode() * 50)
    data = data[:len(data) // 2] if truncated else data[:10] + b"\xff" * 20 + data[30:]
    (tmp / "highlight_val.jsonl.gz").write_bytes(data)
    return lambda: qvhighlights.read(tmp / "highlight_val.jsonl.gz")


def _anet(tmp, entry=None, text=None, clamp=False):
    entry = entry or {"duration": 82.73, "timestamps": [[0.83, 19.86]],
                      "sentences": ["A young woman dances."]}
    (tmp / "val_1.json").write_text(text if text is not None else
                                    json.dumps({"v_QOlSCBRmfWY": entry}, indent=1))
    return lambda: activitynet.read(tmp / "val_1.json", clamp=clamp)


# ---------------------------------------------------------------------- referring expressions
INSTANCES = {"images": [{"id": 1, "file_name": "COCO_1.jpg", "height": 480, "width": 640}],
             "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "iscrowd": 0,
                              "bbox": [10.0, 20.0, 100.0, 50.0], "area": 5000.0}],
             "categories": [{"id": 1, "name": "person"}]}
REF = {"ref_id": 0, "ann_id": 9, "image_id": 1, "split": "train", "category_id": 1,
       "sentences": [{"sent": "the lady", "sent_id": 0}]}


def _refcoco(tmp, bbox=None, refs=None, refs_bytes=None, instances_text=None):
    instances = json.loads(json.dumps(INSTANCES))
    if bbox is not None:
        instances["annotations"][0]["bbox"] = bbox
    (tmp / "instances.json").write_text(instances_text or json.dumps(instances))
    with open(tmp / "refs(unc).p", "wb") as f:
        if refs_bytes is not None:
            f.write(refs_bytes)
        else:
            pickle.dump(refs or [REF], f)
    return lambda: refcoco.read(tmp / "refs(unc).p", tmp / "instances.json", tmp)


def _flat(tmp, **changes):
    row = {"id": "a", "image": "imgs/1.jpg", "expression": "red car", "bbox": [10, 20, 50, 60],
           "height": 100, "width": 200}
    row.update(changes)
    row = {k: v for k, v in row.items() if v is not None}
    (tmp / "grounding.json").write_text(json.dumps([row]))
    return lambda: refcoco.read_flat(tmp / "grounding.json", tmp)


# ---------------------------------------------------------------------- tracking
def _lasot(tmp, gt, n=4, occlusion=None, frames=True):
    seq = tmp / "airplane" / "airplane-1"
    (seq / "img").mkdir(parents=True)
    for i in range(n if frames else 0):
        _jpg(seq / "img" / f"{i + 1:08d}.jpg")
    (seq / "groundtruth.txt").write_text(gt)
    if occlusion is not None:
        (seq / "full_occlusion.txt").write_text(occlusion)
    return lambda: lasot.read(tmp)


GT4 = "1,2,10,8\n2,2,10,8\n3,3,10,8\n3,4,10,8\n"


def _got(tmp, gt, absence=None, listed=("GOT-10k_Train_000001",)):
    seq = tmp / "train" / "GOT-10k_Train_000001"
    for i in range(3):
        _jpg(seq / f"{i + 1:08d}.jpg")
    (seq / "groundtruth.txt").write_text(gt)
    if absence is not None:
        (seq / "absence.label").write_text(absence)
    (tmp / "train" / "list.txt").write_text("".join(n + "\n" for n in listed))
    return lambda: got10k.read(tmp)


# ---------------------------------------------------------------------- segmentation
def _davis(tmp, labels, frame_hw=(24, 32), n_frames=None):
    labels = np.asarray(labels, np.uint8)
    for t in range(n_frames or len(labels)):
        _jpg(tmp / "JPEGImages" / "480p" / "bear" / f"{t:05d}.jpg", *frame_hw)
    for t, label in enumerate(labels):
        _png(tmp / "Annotations" / "480p" / "bear" / f"{t:05d}.png", label)
    (tmp / "ImageSets" / "2017").mkdir(parents=True)
    (tmp / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    return lambda: davis.read(tmp, "val", lazy=False)


def _labels(t=3, h=24, w=32, first_empty=False):
    labels = np.zeros((t, h, w), np.uint8)
    labels[:, 2:6, 2:6] = 1
    if first_empty:
        labels[0] = 0
    return labels


def _davis_mixed(tmp):
    """Frames and the first annotation 32x24, the last annotation 64x48."""
    labels = _labels(3)
    read = _davis(tmp, labels)
    _png(tmp / "Annotations" / "480p" / "bear" / "00002.png", _labels(1, 48, 64)[0])
    return read


def _refytvos(tmp, meta_text=None, obj_id="1", anno_hw=(24, 32)):
    names = refytvos.write_video(tmp, "train", "003234408d",
                                 np.zeros((2, 24, 32, 3), np.uint8), _labels(2))
    if anno_hw != (24, 32):
        _png(tmp / "train" / "Annotations" / "003234408d" / "00005.png", _labels(1, *anno_hw)[0])
    meta = {"videos": {"003234408d": {"expressions": {"0": {"exp": "a penguin", "obj_id": obj_id}},
                                      "frames": names}}}
    folder = tmp / "meta_expressions" / "train"
    folder.mkdir(parents=True)
    (folder / "meta_expressions.json").write_text(meta_text or json.dumps(meta))
    return lambda: refytvos.read(tmp, "train", lazy=False)


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def _mevis(tmp, rle=None, mask_text=None, expression=None):
    split = tmp / "train"
    for f in ("00000", "00001"):
        _jpg(split / "JPEGImages" / "vidA" / f"{f}.jpg")
    good = np.zeros((24, 32), bool)
    good[2:8, 3:9] = True
    mask_dict = {"7": [_rle(good), rle if rle is not None else _rle(good)]}
    expression = expression or {"exp": "the dog", "obj_id": [0], "anno_id": [7]}
    meta = {"videos": {"vidA": {"expressions": {"0": expression}, "frames": ["00000", "00001"]}}}
    (split / "mask_dict.json").write_text(mask_text or json.dumps(mask_dict))
    (split / "meta_expressions.json").write_text(json.dumps(meta))
    return lambda: mevis.read(tmp, "train", lazy=False)


def _small_rle():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:7] = True
    r = _rle(m)
    return {"size": [24, 32], "counts": r["counts"]}  # claims the frame size, holds 10x12


# ---------------------------------------------------------------------- conversations
LLAVA_OK = {"id": "a", "image": "coco/1.jpg", "conversations": [
    {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A bus."}]}


def _llava(tmp, rows=None, text=None, name="llava.json"):
    path = tmp / name
    if name.endswith(".gz"):
        data = gzip.compress(json.dumps(rows or [LLAVA_OK]).encode())
        path.write_bytes(data[:-12])  # cut: no end-of-stream, no CRC
    else:
        path.write_text(text if text is not None else json.dumps(rows, indent=1))
    return lambda: llava.read(path, tmp)


FORMAT_CASES: dict[str, tuple[Callable, type, list[str]]] = {
    # --- Charades-STA
    "charades: line without ##": (
        lambda t: _charades(t, "AO8RW 0.0 6.9##ok.\nAO8RW 3.0 no separator\n"), ValueError,
        ["charades_sta_test.txt:2", "expected '<vid> <start> <end>##<sentence>'"]),
    "charades: start not a number": (
        lambda t: _charades(t, "AO8RW abc 6.9##a person.\n"), ValueError,
        ["charades_sta_test.txt:1", "start", "expected a number"]),
    "charades: window past the duration": (
        lambda t: _charades(t, "AO8RW 30.0 40.0##beyond the end.\n"), ValueError,
        ["charades_sta_test.txt:1", "AO8RW (qid 0)", "duration=33.67"]),
    "charades: end before start": (
        lambda t: _charades(t, "AO8RW 9.0 4.0##backwards.\n"), ValueError,
        ["charades_sta_test.txt:1", "start < end"]),
    "charades: NaN window": (
        lambda t: _charades(t, "AO8RW nan 4.0##no start.\n"), ValueError,
        ["charades_sta_test.txt:1", "finite"]),
    "charades: video without duration": (
        lambda t: _charades(t, "ZZZZZ 1.0 4.0##unknown.\n"), ValueError,
        ["charades_sta_test.txt:1", "no duration known", "ZZZZZ"]),
    "charades: csv length not a number": (
        _charades_csv, ValueError, ["Charades_v1_test.csv:3", "AO8RW", "expected a number"]),
    # --- QVHighlights
    "qvhighlights: invalid JSON line": (
        lambda t: _qvh(t, QVH, '{"qid": 1, "query": "x",'), ValueError,
        ["highlight_val.jsonl:2", "invalid JSON", "column"]),
    "qvhighlights: row without duration": (
        lambda t: _qvh(t, {k: v for k, v in QVH.items() if k != "duration"}), ValueError,
        ["highlight_val.jsonl:1", "'duration'", "expected a QVHighlights row"]),
    "qvhighlights: NaN window": (
        lambda t: _qvh(t, '{"qid": 5, "query": "q", "duration": 30, "vid": "v", '
                          '"relevant_windows": [[NaN, 10]]}'), ValueError,
        ["highlight_val.jsonl:1", "v (qid 5)", "not finite"]),
    "qvhighlights: window end before start": (
        lambda t: _qvh(t, dict(QVH, relevant_windows=[[20, 10]])), ValueError,
        ["highlight_val.jsonl:1", "qid 8737", "start < end"]),
    "qvhighlights: window past the duration": (
        lambda t: _qvh(t, dict(QVH, relevant_windows=[[120, 130]])), ValueError,
        ["highlight_val.jsonl:1", "qid 8737", "duration=126"]),
    "qvhighlights: window not a pair": (
        lambda t: _qvh(t, dict(QVH, relevant_windows=[[1, 2, 3]])), ValueError,
        ["highlight_val.jsonl:1", "relevant_windows", "[start, end] pairs"]),
    "qvhighlights: clip id past the last clip": (
        lambda t: _qvh(t, dict(QVH, relevant_clip_ids=[0, 70])), ValueError,
        ["highlight_val.jsonl:1", "qid 8737", "relevant_clip_ids", "63 clips"]),
    "qvhighlights: corrupt gzip": (
        lambda t: _qvh_gzip(t, truncated=False), ValueError,
        ["highlight_val.jsonl.gz", "gzip"]),
    "qvhighlights: truncated gzip": (
        lambda t: _qvh_gzip(t, truncated=True), ValueError,
        ["highlight_val.jsonl.gz", "truncated gzip"]),
    # --- ActivityNet Captions
    "activitynet: invalid JSON": (
        lambda t: _anet(t, text='{\n "v_a": {\n  "duration": 82.73,,\n }\n}'), ValueError,
        ["val_1.json", "invalid JSON at line 3, column"]),
    "activitynet: entry without duration": (
        lambda t: _anet(t, {"timestamps": [[0, 1]], "sentences": ["x"]}), ValueError,
        ["val_1.json", "v_QOlSCBRmfWY", "'duration'"]),
    "activitynet: moment past the duration": (
        lambda t: _anet(t, {"duration": 20, "timestamps": [[5, 25.5]], "sentences": ["x"]}),
        ValueError, ["val_1.json", "v_QOlSCBRmfWY_0", "duration=20"]),
    "activitynet: NaN timestamp, even when clamping": (
        lambda t: _anet(t, text='{"v_QOlSCBRmfWY": {"duration": 20, "timestamps": [[NaN, 5]], '
                                '"sentences": ["x"]}}', clamp=True), ValueError,
        ["val_1.json", "v_QOlSCBRmfWY", "not finite"]),
    "activitynet: timestamp not a pair": (
        lambda t: _anet(t, {"duration": 20, "timestamps": [[5]], "sentences": ["x"]}),
        ValueError, ["val_1.json", "v_QOlSCBRmfWY", "[start, end] pairs"]),
    # --- RefCOCO (pickle + COCO instances) and flat grounding JSON
    "refcoco: corrupt refs pickle": (
        lambda t: _refcoco(t, refs_bytes=b"\x80\x04garbage, not a pickle"), ValueError,
        ["refs(unc).p", "expected the refer toolkit's pickled list"]),
    "refcoco: invalid instances JSON": (
        lambda t: _refcoco(t, instances_text='{"images": [\n{"id": 1,}\n]}'), ValueError,
        ["instances.json", "invalid JSON at line 2"]),
    "refcoco: box with w <= 0": (
        lambda t: _refcoco(t, bbox=[10.0, 20.0, 0.0, 50.0]), ValueError,
        ["instances.json", "annotation 9", "w > 0"]),
    "refcoco: box outside the image": (
        lambda t: _refcoco(t, bbox=[600.0, 20.0, 60.0, 50.0]), ValueError,
        ["refs(unc).p", "ref 0/0", "outside the 640x480 image"]),
    "refcoco: NaN box": (
        lambda t: _refcoco(t, bbox=[10.0, float("nan"), 10.0, 5.0]), ValueError,
        ["annotation 9", "finite"]),
    "refcoco: ref of an absent image": (
        lambda t: _refcoco(t, refs=[dict(REF, image_id=77)]), ValueError,
        ["refs(unc).p", "ref 0", "image 77", "absent"]),
    "refcoco: ref without sentences": (
        lambda t: _refcoco(t, refs=[{k: v for k, v in REF.items() if k != "sentences"}]),
        ValueError, ["refs(unc).p", "refs[0]", "'sentences'"]),
    "flat grounding: bbox of 3 numbers": (
        lambda t: _flat(t, bbox=[10, 20, 50]), ValueError,
        ["grounding.json", "row 0", "4 numbers"]),
    "flat grounding: row without bbox": (
        lambda t: _flat(t, bbox=None), ValueError, ["grounding.json", "row 0", "'bbox'"]),
    "flat grounding: NaN bbox": (
        lambda t: _flat(t, bbox=[10, "nan", 50, 60]), ValueError,
        ["grounding.json", "row 0", "finite"]),
    "flat grounding: box outside the image": (
        lambda t: _flat(t, bbox=[150, 20, 250, 60]), ValueError,
        ["grounding.json", "row 0", "outside the 200x100 image"]),
    "flat grounding: normalised bbox above 1": (
        lambda t: _flat(t, bbox=[0.1, 0.2, 1.5, 0.6], normalized=True), ValueError,
        ["grounding.json", "row 0", "[0, 1]"]),
    # --- LaSOT
    "lasot: fewer ground-truth rows than frames": (
        lambda t: _lasot(t, "1,2,10,8\n2,2,10,8\n3,4,10,8\n"), ValueError,
        ["airplane-1/groundtruth.txt", "3 boxes for 4 frames", "one 'x,y,w,h' line per frame"]),
    "lasot: malformed ground-truth line": (
        lambda t: _lasot(t, "1,2,10,8\n2,2,ten,8\n3,3,10,8\n3,4,10,8\n"), ValueError,
        ["groundtruth.txt:2", "4 numbers"]),
    "lasot: visible box with w <= 0": (
        lambda t: _lasot(t, "1,2,10,8\n2,2,0,8\n3,3,10,8\n3,4,10,8\n"), ValueError,
        ["groundtruth.txt", "airplane-1", "frame 1", "empty box"]),
    "lasot: NaN box": (
        lambda t: _lasot(t, "1,2,10,8\nnan,2,10,8\n3,3,10,8\n3,4,10,8\n"), ValueError,
        ["groundtruth.txt", "airplane-1", "frame 1", "non-finite"]),
    "lasot: box outside the frame": (
        lambda t: _lasot(t, "1,2,10,8\n25,2,10,8\n3,3,10,8\n3,4,10,8\n"), ValueError,
        ["groundtruth.txt", "airplane-1", "outside the 32x24 frame"]),
    "lasot: occlusion flag not 0/1": (
        lambda t: _lasot(t, GT4, occlusion="0,0,x,0\n"), ValueError,
        ["full_occlusion.txt:1", "0/1 flags"]),
    "lasot: empty img folder": (
        lambda t: _lasot(t, GT4, frames=False), FileNotFoundError, ["img", "no .jpg frames"]),
    # --- GOT-10k
    "got10k: test sequence with only the first box": (
        lambda t: _got(t, "3,4,20,10\n"), ValueError,
        ["GOT-10k_Train_000001/groundtruth.txt", "1 boxes for 3 frames"]),
    "got10k: absence label not 0/1": (
        lambda t: _got(t, "3,4,20,10\n3,4,20,10\n3,4,20,10\n", absence="0\n2\n0\n"), ValueError,
        ["absence.label:2", "expected 0 or 1"]),
    "got10k: box outside the frame": (
        lambda t: _got(t, "347,443,429,272\n3,4,20,10\n3,4,20,10\n"), ValueError,
        ["GOT-10k_Train_000001", "frame 0 box", "outside the 32x24 frame"]),
    "got10k: listed sequence missing": (
        lambda t: _got(t, "3,4,20,10\n3,4,20,10\n3,4,20,10\n",
                       listed=("GOT-10k_Train_000001", "GOT-10k_Train_000002")),
        FileNotFoundError, ["GOT-10k_Train_000002", "list.txt", "not found"]),
    # --- DAVIS
    "davis: first mask PNG of another size than its frame": (
        lambda t: _davis(t, _labels(3, 48, 64)), ValueError,
        ["bear", "00000.png", "64x48", "32x24", "frame size"]),
    "davis: later mask PNG of another size": (
        _davis_mixed, ValueError,
        ["bear", "00002.png", "frame size"]),
    "davis: empty first-frame mask": (
        lambda t: _davis(t, _labels(3, first_empty=True)), ValueError,
        ["bear", "no object in the first annotation", "00000.png"]),
    "davis: fewer annotations than frames": (
        lambda t: _davis(t, _labels(2), n_frames=3), ValueError,
        ["bear", "3 frames", "2 annotations"]),
    # --- Ref-YouTube-VOS
    "refytvos: invalid meta JSON": (
        lambda t: _refytvos(t, meta_text='{"videos": {\n  "v": {"frames": [}\n}}'), ValueError,
        ["meta_expressions.json", "invalid JSON at line 2"]),
    "refytvos: obj_id not an integer": (
        lambda t: _refytvos(t, obj_id="penguin"), ValueError,
        ["meta_expressions.json", "003234408d", "obj_id", "integer"]),
    "refytvos: mask of another size than its frame": (
        lambda t: _refytvos(t, anno_hw=(12, 16)), ValueError,
        ["003234408d/00005.png", "16x12", "frame size"]),
    # --- MeViS
    "mevis: RLE of the wrong size": (
        lambda t: _mevis(t, rle=_small_rle()), ValueError,
        ["mask_dict.json", "anno_id 7", "frame 1", "RLE of a 32x24 mask"]),
    "mevis: RLE size field not the frame size": (
        lambda t: _mevis(t, rle={"size": [10, 12], "counts": _small_rle()["counts"]}),
        ValueError, ["mask_dict.json", "anno_id 7", "frame 1", "differs from the frame size"]),
    "mevis: garbage RLE counts": (
        lambda t: _mevis(t, rle={"size": [24, 32], "counts": "not an rle \x01"}), ValueError,
        ["mask_dict.json", "anno_id 7", "RLE"]),
    "mevis: invalid mask_dict JSON": (
        lambda t: _mevis(t, mask_text='{"7": [null,\n null,]}'), ValueError,
        ["mask_dict.json", "invalid JSON at line 2"]),
    "mevis: expression without anno_id": (
        lambda t: _mevis(t, expression={"exp": "the dog", "obj_id": [0]}), ValueError,
        ["meta_expressions.json", "vidA", "'anno_id'"]),
    # --- LLaVA
    "llava: entry without conversations": (
        lambda t: _llava(t, [LLAVA_OK, {"id": "b", "image": "coco/2.jpg"}]), ValueError,
        ["llava.json", "entry 1 (id b)", "'conversations'"]),
    "llava: invalid JSON": (
        lambda t: _llava(t, text='[\n {"id": "a",\n  "conversations": [}\n]'), ValueError,
        ["llava.json", "invalid JSON at line 3, column"]),
    "llava: corrupt gzip": (
        lambda t: _llava(t, name="llava.json.gz"), ValueError, ["llava.json.gz", "gzip"]),
    "llava: turns not alternating": (
        lambda t: _llava(t, [dict(LLAVA_OK, conversations=[
            {"from": "human", "value": "a"}, {"from": "human", "value": "b"}])]), ValueError,
        ["llava.json", "entry 0", "turn 1", "'gpt'"]),
    "llava: turn that is a string": (
        lambda t: _llava(t, [dict(LLAVA_OK, conversations=["<image>\nhi", "hello"])]),
        ValueError, ["llava.json", "entry 0", "turn 0"]),
    "llava: top level not a list": (
        lambda t: _llava(t, text=json.dumps({"a": LLAVA_OK})), ValueError,
        ["llava.json", "expected a JSON list"]),
    "llava: media path not a string": (
        lambda t: _llava(t, [dict(LLAVA_OK, image=["a.jpg", "b.jpg"])]), ValueError,
        ["llava.json", "entry 0", "image", "path string"]),
}


@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_bad_format_input(tmp_path, case):
    build, error, words = FORMAT_CASES[case]
    read = build(tmp_path)
    with pytest.raises(error) as info:
        read()
    for word in words:
        assert word in str(info.value), (case, str(info.value))


# ---------------------------------------------------------------------- writers
def _files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def _track(n=4):
    frames = np.full((n, 24, 32, 3), 90, np.uint8)
    boxes = np.array([[1, 2, 10, 8]] * n, dtype=float)
    return frames, boxes, np.ones(n, bool)


@pytest.mark.parametrize("bad", ["box outside", "hidden first frame", "fewer boxes", "nan box"])
def test_lasot_write_leaves_no_rejected_sequence(tmp_path, bad):
    frames, boxes, visible = _track()
    lasot.write(tmp_path, "cat-1", frames, boxes, visible)
    before = _files(tmp_path)
    if bad == "box outside":
        boxes[2] = [28, 2, 10, 8]
    elif bad == "hidden first frame":
        visible[0] = False
    elif bad == "fewer boxes":
        boxes = boxes[:3]
    else:
        boxes[1, 0] = np.nan
    with pytest.raises(ValueError, match="cat-2"):
        lasot.write(tmp_path, "cat-2", frames, boxes, visible)
    assert _files(tmp_path) == before and not (tmp_path / "cat" / "cat-2").exists()
    assert [s.name for s in lasot.read(tmp_path)] == ["cat-1"]  # the split still reads


def test_lasot_write_refuses_an_existing_sequence(tmp_path):
    frames, boxes, visible = _track()
    lasot.write(tmp_path, "cat-1", frames, boxes, visible)
    with pytest.raises(ValueError, match=r"cat-1.*already exists"):
        lasot.write(tmp_path, "cat-1", frames[:2], boxes[:2], visible[:2])
    assert len(lasot.read(tmp_path)[0].frames) == 4


@pytest.mark.parametrize("bad", ["box outside", "empty box", "visible shape"])
def test_got10k_write_does_not_list_a_rejected_sequence(tmp_path, bad):
    frames, boxes, visible = _track(3)
    got10k.write(tmp_path, "train", "seqA", frames, boxes, visible)
    before = _files(tmp_path)
    if bad == "box outside":
        boxes[1] = [1, 20, 10, 8]
    elif bad == "empty box":
        boxes[1] = [1, 2, 0.00001, 8]  # rounds to 0 as written (%.4f)
    else:
        visible = visible[:2]
    with pytest.raises(ValueError, match="seqB"):
        got10k.write(tmp_path, "train", "seqB", frames, boxes, visible)
    assert _files(tmp_path) == before
    assert (tmp_path / "train" / "list.txt").read_text() == "seqA\n"
    assert [s.name for s in got10k.read(tmp_path, "train")] == ["seqA"]


@pytest.mark.parametrize("bad", ["empty first frame", "object only later", "labels shape"])
def test_davis_write_does_not_list_a_rejected_sequence(tmp_path, bad):
    frames = np.full((3, 24, 32, 3), 90, np.uint8)
    davis.write(tmp_path, "bear", frames, _labels(3), split="val")
    before = _files(tmp_path)
    labels = _labels(3)
    if bad == "empty first frame":
        labels[0] = 0
    elif bad == "object only later":
        labels[2, 10:12, 10:12] = 2
    else:
        labels = labels[:, :12]
    with pytest.raises(ValueError, match=r"sequence dog.*expected"):
        davis.write(tmp_path, "dog", frames, labels, split="val")
    assert _files(tmp_path) == before
    assert [s.name for s in davis.read(tmp_path, "val", lazy=False)] == ["bear"]
