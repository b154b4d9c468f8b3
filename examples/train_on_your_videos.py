"""Train on a folder of your own videos with ``tpo fit``, then score the checkpoint with ``tpo validate``.

The data is a folder of mp4 files and Charades-STA annotations (``<vid> <start_s> <end_s>##<sentence>``
lines, durations in a csv); ``train_on_your_videos.yaml`` beside this script declares it and a tiny
model. Copy the YAML, point it at your folder and run the two commands yourself:

    MY_VIDEOS=/data/my_videos tpo fit --config train_on_your_videos.yaml
    MY_VIDEOS=/data/my_videos tpo validate --config train_on_your_videos.yaml --ckpt_path .../last.ckpt

This script writes a small stand-in folder (synthetic clips of moving shapes) and runs both:

    python examples/train_on_your_videos.py --out /tmp/tpo_train
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from tpo.cli import main as tpo
from tpo.datamodules.synthetic import random_objects, render_clip, write_h264

CONFIG = Path(__file__).with_name("train_on_your_videos.yaml")
NUM_VIDEOS = 12  # the last quarter of them are held out for validation
FRAME_SIZE = 32  # pixels
NUM_FRAMES = 16  # frames per clip
FPS = 8.0
SEED = 0


# ---------------------------------------------------------------------------------------- setup
def write_your_videos(root: Path) -> None:
    """Stand-in data in Charades-STA's layout: ``videos/``, ``charades_sta_{train,val}.txt``,
    ``durations.csv``."""
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    lines = {"train": [], "val": []}
    for i in range(NUM_VIDEOS):
        vid = f"video{i:03d}"
        objects = random_objects(rng, FRAME_SIZE, NUM_FRAMES)
        frames, _ = render_clip(objects, FRAME_SIZE, NUM_FRAMES)
        write_h264(root / "videos" / f"{vid}.mp4", frames, FPS)
        split = "val" if i >= NUM_VIDEOS * 3 // 4 else "train"
        lines[split] += [f"{vid} {o.appear / FPS:.2f} {o.disappear / FPS:.2f}##the {o.name} moves "
                         f"{o.direction}." for o in objects]
    for split, rows in lines.items():
        (root / f"charades_sta_{split}.txt").write_text("\n".join(rows) + "\n")
    with open(root / "durations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "length"])
        writer.writerows([f"video{i:03d}", NUM_FRAMES / FPS] for i in range(NUM_VIDEOS))


def logged(run_dir: Path, name: str) -> list[float]:
    """Every value of the metric ``name`` in a CSVLogger run's ``metrics.csv``, in logging order."""
    with open(run_dir / "metrics.csv") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


# ------------------------------------------------------------------------------------ your code
def main(out: Path) -> dict[str, float]:
    write_your_videos(out / "my_videos")
    os.environ["MY_VIDEOS"] = str(out / "my_videos")  # the YAML reads its paths from ${oc.env:MY_VIDEOS}
    logs = ["--trainer.logger.init_args.save_dir", str(out / "runs")]  # one run folder per command

    tpo(["fit", "--config", str(CONFIG), *logs])
    fit_run = out / "runs" / "lightning_logs" / "version_0"
    checkpoint = fit_run / "checkpoints" / "last.ckpt"
    tpo(["validate", "--config", str(CONFIG), "--ckpt_path", str(checkpoint), *logs])
    validate_run = out / "runs" / "lightning_logs" / "version_1"

    train_loss = logged(fit_run, "train/loss")
    print(f"checkpoint: {checkpoint}")
    print(f"training loss, first -> last logged: {train_loss[0]:.3f} -> {train_loss[-1]:.3f}")
    metrics = {name: logged(validate_run, name)[-1]
               for name in ("val/temporal/R1@0.5", "val/temporal/mIoU", "val/lm_loss")}
    for name, value in metrics.items():
        print(f"held-out {name}: {value:.3f}")
    assert train_loss[-1] < train_loss[0], "the training loss did not fall"
    assert 0.0 <= metrics["val/temporal/R1@0.5"] <= 1.0 and 0.0 <= metrics["val/temporal/mIoU"] <= 1.0
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tpo_example_out"), help="output folder (new)")
    main(parser.parse_args().out)
