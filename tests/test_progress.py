"""Progress outside a terminal: one line every few percent, with the counts and the loss."""

from __future__ import annotations

import io
import re

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from tpo.progress import LineProgress, LineProgressBar, is_terminal, progress


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int) -> DataLoader:
    x = torch.randn(n, 2)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=1)


def test_a_line_each_time_another_tenth_is_done_and_one_at_the_end():
    stream = io.StringIO()
    with LineProgress(50, "predict box", every=10, stream=stream) as bar:
        for _ in range(50):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert [re.search(r"\((\d+)%\)", line).group(1) for line in lines] == [
        "10", "20", "30", "40", "50", "60", "70", "80", "90", "100"]
    assert lines[4].startswith("predict box: it 25/50 (50%)") and "left" in lines[4]
    assert "left" not in lines[-1]


def test_big_updates_print_once_and_disable_prints_nothing():
    stream = io.StringIO()
    bar = LineProgress(10, "x", every=5, stream=stream)
    bar.update(7)
    bar.close()
    bar.close()
    assert len(stream.getvalue().splitlines()) == 2  # 70 % and the end, not one per 5 %
    quiet = io.StringIO()
    LineProgress(10, "x", stream=quiet, disable=True).update(10)
    assert quiet.getvalue() == ""


def test_lightning_fit_prints_steps_with_the_loss_and_validation_lines():
    stream = io.StringIO()
    trainer = L.Trainer(max_steps=40, logger=False, enable_checkpointing=False, accelerator="cpu",
                        callbacks=[LineProgressBar(every=25, stream=stream)], num_sanity_val_steps=0,
                        val_check_interval=20, limit_val_batches=4, enable_model_summary=False)
    trainer.fit(_Regression(), _loader(40), _loader(8))
    text = stream.getvalue()
    fit = [line for line in text.splitlines() if line.startswith("fit:")]
    assert [re.search(r"step (\d+)/40", line).group(1) for line in fit] == ["10", "20", "30", "40"]
    assert all(re.search(r"loss \d", line) for line in fit)
    assert text.count("validate: batch 4/4 (100%)") == 2


def test_a_string_stream_is_no_terminal_and_gets_line_progress():
    assert not is_terminal(io.StringIO())
    assert isinstance(progress(3, "x"), LineProgress) == (not is_terminal())
