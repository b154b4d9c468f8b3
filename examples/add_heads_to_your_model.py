"""Add TPO task tokens and a temporal-grounding head to your own Hugging Face LLaVA model.

The model, the processor and the video are yours; tpo adds a learnable ``<temp>`` task token whose
last hidden state feeds a :class:`~tpo.heads.TemporalGroundingHead`, and one training objective:
the language loss (the model learns to answer ``<time_begin>``) plus the head's span loss.

    python examples/add_heads_to_your_model.py --out /tmp/tpo_heads

Offline and tiny: the "setup" block builds a stand-in for your model from configs and writes a
stand-in for your video. Everything after it is what you would write around your own model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from tpo import TaskTokens
from tpo.backbones.tiny import train_tiny_tokenizer
from tpo.datamodules import VideoReader
from tpo.datamodules.synthetic import random_objects, render_clip, write_h264
from tpo.heads import TemporalGroundingHead
from tpo.losses import weighted

NUM_FRAMES = 8  # frames the model reads from the video
FRAME_SIZE = 32  # pixels, the vision tower's input side
HIDDEN = 64  # LLM width
STEPS = 25  # training steps on the one video
SEED = 0


# ---------------------------------------------------------------------------------------- setup
def build_your_model() -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A tiny LLaVA from configs: stands in for ``LlavaForConditionalGeneration.from_pretrained(dir)``."""
    tokenizer = train_tiny_tokenizer()  # stands in for AutoTokenizer.from_pretrained(dir)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=FRAME_SIZE, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    square = {"height": FRAME_SIZE, "width": FRAME_SIZE}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": FRAME_SIZE}, crop_size=square),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaForConditionalGeneration(config), processor


def write_your_video(path: Path, fps: float = 4.0) -> tuple[str, tuple[float, float]]:
    """An H.264 clip of two moving shapes; returns a query and its true moment in seconds."""
    objects = random_objects(np.random.default_rng(SEED), FRAME_SIZE, 2 * NUM_FRAMES)
    frames, _ = render_clip(objects, FRAME_SIZE, 2 * NUM_FRAMES)
    write_h264(path, frames, fps)
    target = objects[0]
    return f"When is the {target.name} visible?", (target.appear / fps, target.disappear / fps)


# ------------------------------------------------------------------------------------ your code
def main(out: Path) -> None:
    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_your_model()
    query, (start_s, end_s) = write_your_video(out / "clip.mp4")

    # Task tokens: adds <time_begin><temp> to the tokenizer and grows the model's embeddings.
    tokens = TaskTokens(hidden_size=model.config.text_config.hidden_size, tasks=["temporal"])
    tokens.add_to(processor.tokenizer, model)
    # The head reads the hidden state at <temp> and the projected per-frame visual tokens (LLM width).
    head = TemporalGroundingHead(embed_dim=HIDDEN, video_dim=HIDDEN, num_queries=5, hidden_dim=64,
                                 num_heads=4, dim_feedforward=128, dropout=0.0)

    clip = VideoReader(out / "clip.mp4").sample(NUM_FRAMES)
    # Plain LLaVA reads a video as its frames, one <image> each; the answer calls the task.
    prompt = f"USER: {'<image>' * NUM_FRAMES}\n{query} ASSISTANT: <time_begin><temp>"
    batch = processor(text=[prompt], images=list(clip.frames), return_tensors="pt")
    ids = batch["input_ids"]
    labels = torch.where(ids == tokens.begin_ids[0], ids, -100)  # the LM loss teaches the task call
    center, width = (start_s + end_s) / 2 / clip.duration, (end_s - start_s) / clip.duration
    targets = [{"spans": torch.tensor([[center, width]])}]  # normalised (center, width)

    def forward():
        # Encode the frames once: the head and the LLM read the same features.
        vision = model.get_image_features(pixel_values=batch["pixel_values"], return_dict=True)
        frames = torch.stack(vision.pooler_output)[None]  # (1, T, N, D): N tokens per frame
        embeds = tokens.inject(ids, model.get_input_embeddings()(ids))  # <temp> := learned embedding
        lm = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=labels,
                   mm_encoder_outputs={"image": vision}, output_hidden_states=True)
        task_embeds = tokens.gather(ids, lm.hidden_states[-1])["temporal"].embeds  # (1, D)
        return lm.loss, head(task_embeds, frames)

    params = [*model.parameters(), *tokens.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    history = []
    for step in range(STEPS):
        lm_loss, output = forward()
        head_loss = sum(weighted(head.loss(output, targets), head.weight_dict).values())
        loss = lm_loss + head_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if step % 5 == 0 or step == STEPS - 1:
            print(f"step {step:2d}  loss {loss.item():.3f} "
                  f"(lm {lm_loss.item():.3f}, head {head_loss.item():.3f})")

    model.eval()
    head.eval()
    with torch.no_grad():
        _, output = forward()
    (prediction,) = head.postprocess(output, [{"duration": clip.duration}])
    best_start, best_end, score = prediction.windows[0].tolist()
    print(f"query: {query!r}; truth {start_s:.2f}-{end_s:.2f} s")
    print(f"predicted {best_start:.2f}-{best_end:.2f} s (score {score:.2f})")
    print(f"loss first -> last: {history[0]:.3f} -> {history[-1]:.3f}")
    assert history[-1] < history[0], "the loss did not fall"
    assert 0 <= best_start <= best_end <= clip.duration


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tpo_example_out"), help="output folder")
    main(parser.parse_args().out)
