"""The query's words as a side input of the heads.

A grounding head has to know *which* object the question names. TPO gets that from the task
embedding alone (the LLM's hidden state at the task token), which works when the LLM already
reads: a pretrained LLM routes "the red circle" to the task token. A small LLM trained from
scratch does not, within a laptop's budget: in the demo, swapping the colour word in a prompt moved
the task embedding by 0.1 % (``benchmarks/query_sensitivity.py``), so every head learned
query-agnostic answers (the most salient box, the masks of both objects).

DETR-style grounding models read their query with a text encoder of their own (Moment-DETR: CLIP,
GroundingDINO: BERT). :class:`QueryWords` is the smallest such reader: a bag of the query's words,
each a fixed-norm vector of its own table, added to the task embedding at the task embedding's
norm. The query is the expression the task names (the QVHighlights sentence, the referring
expression), tokenised apart from the instruction (the collator's ``query_ids``), so the
instruction's paraphrase does not leak in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch.nn.functional as F
from lightning import Callback
from torch import Tensor, nn

from tpo.heads.base import check_shape

__all__ = ["QueryWords", "QueryWordsFade"]


class QueryWords(nn.Module):
    """Adds a bag of the query's words to task embeddings.

    ``out = task_embeds + |task_embeds| * normalize(mean_i words[query_ids_i])`` over the valid
    query tokens; rows without a query word are returned unchanged. The word table starts as
    independent ``N(0, 1)`` vectors (nearly orthogonal for ``D >= 64``), so different words give
    different directions from the first step and a head can tell "red" from "blue" before the
    table has trained.

    ``weight`` (default 1) scales the added vector; :class:`QueryWordsFade` lowers it during
    training, so the heads learn to lean on the task embedding instead.

    Args:
        vocab_size: rows of the word table (the tokenizer's length, task tokens included).
        embed_dim: ``D``, the task embedding size.
    """

    def __init__(self, *, vocab_size: int, embed_dim: int) -> None:
        super().__init__()
        self.weight = 1.0
        self.words = nn.Embedding(vocab_size, embed_dim)
        nn.init.normal_(self.words.weight, std=1.0)

    def forward(self, task_embeds: Tensor, query_ids: Tensor, query_mask: Tensor) -> Tensor:
        """Add the query to each task embedding.

        Args:
            task_embeds: ``(N, D)`` task embeddings.
            query_ids: ``(N, L)`` long, the query tokens of each embedding's sample.
            query_mask: ``(N, L)`` bool, True on real query tokens.

        Returns:
            ``(N, D)``, in ``task_embeds``' dtype.
        """
        sizes = check_shape(task_embeds, "task_embeds", ("N", "D"))
        check_shape(query_ids, "query_ids", (sizes["N"], "L"))
        check_shape(query_mask, "query_mask", tuple(query_ids.shape))
        vocab = self.words.num_embeddings
        if query_ids.numel() and (int(query_ids.min()) < 0 or int(query_ids.max()) >= vocab):
            raise ValueError(
                f"query_ids: token ids must lie in [0, {vocab}), got {int(query_ids.min())}.."
                f"{int(query_ids.max())} (a tokenizer other than the one the word table was built for?)"
            )
        if self.weight == 0:
            return task_embeds
        mask = query_mask.bool()
        bag = (self.words(query_ids) * mask[..., None]).sum(1)
        has_words = mask.any(1, keepdim=True)
        scale = task_embeds.detach().float().norm(dim=-1, keepdim=True)
        added = F.normalize(bag.float(), dim=-1) * scale * has_words * self.weight
        return (task_embeds.float() + added).to(task_embeds.dtype)


class QueryWordsFade(Callback):
    """A curriculum: the query words scaffold the start of training and are gone by its end.

    :class:`QueryWords` gives the heads the query from the first step, so they learn early which
    object a query names; but then nothing asks the LLM to carry the query to the task token. This
    callback fades the words' ``weight`` linearly from 1 to 0 over the first ``seconds`` of
    training (wall clock): as the scaffold goes, the heads' losses push the LLM's task embedding to
    say what the words said. When training ends with the weight at 0 the word table is removed
    (``model.query_words = None``), so the trained model, its evaluation and its export read the
    task embeddings and visual features only.

    Args:
        seconds: how long the fade takes, > 0.
        clock: seconds since an arbitrary origin (default :func:`time.monotonic`).
    """

    def __init__(self, *, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds: expected > 0, got {seconds}")
        self.seconds, self.clock = seconds, clock
        self.start = clock()  # reset when training starts

    @staticmethod
    def _words(pl_module) -> QueryWords:
        words = getattr(pl_module, "query_words", None)
        if not isinstance(words, QueryWords):
            raise ValueError("QueryWordsFade: the module has no query words to fade "
                             "(build it with query_words=True)")
        return words

    def on_train_start(self, trainer, pl_module) -> None:
        self._words(pl_module)
        self.start = self.clock()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        elapsed = self.clock() - self.start
        self._words(pl_module).weight = max(0.0, 1.0 - elapsed / self.seconds)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._words(pl_module).weight == 0:
            pl_module.model.query_words = None
