"""Rows for new tokens: each starts as the mean of the embeddings of the pieces it replaces.

The mean of the old pieces keeps a new word close to what the model already computed for it, so the
extended model starts where the base model was (AdaLM, Unsloth's ``add_new_tokens``; Hewitt 2021
shows the mean keeps the output distribution close to the original).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """What was initialised and how."""

    tied: bool
    rows_before: int
    rows_after: int
    output_initialised: bool
    output_bias_initialised: bool
    whole_mean: list[int] = field(default_factory=list)  # ids whose pieces were all unknown: mean of all rows


def embeddings_tied(model: Any) -> bool:
    """True when the output layer shares its weight tensor with the input embeddings."""
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def _output_bias(model: Any, rows: int) -> torch.Tensor | None:
    """The per-token output bias (BERT's MLM head has one), if the model has it."""
    out = model.get_output_embeddings()
    bias = getattr(out, "bias", None) if out is not None else None
    if isinstance(bias, torch.Tensor) and bias.dim() == 1 and bias.shape[0] == rows:
        return bias
    return None


@torch.no_grad()
def add_rows(model: Any, new_ids: list[int], piece_ids: list[list[int]], *, base_vocab: int,
             unk_id: int | None = None) -> InitReport:
    """Grow the embedding matrices to hold ``new_ids`` and set each new row to the mean of its pieces.

    Args:
        model: a transformers model (not yet wrapped by peft).
        new_ids: the ids of the new tokens.
        piece_ids: for each new token, the base-tokenizer ids it used to be split into.
        base_vocab: the base tokenizer's size; rows below it are the old vocabulary.
        unk_id: the unknown token's id; unknown pieces are left out of the mean (they carry no meaning
            of the word), and a word made only of unknown pieces starts as the mean of all old rows.
    """
    tied = embeddings_tied(model)
    inp = model.get_input_embeddings()
    rows_before = inp.weight.shape[0]
    need = max(new_ids) + 1
    if need > rows_before:
        # mean_resizing off: every new row is overwritten below, so its extra cost buys nothing.
        model.resize_token_embeddings(need, mean_resizing=False)
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    rows_after = inp.weight.shape[0]
    untied_out = out is not None and not tied
    bias = _output_bias(model, rows_after)
    report = InitReport(tied=tied, rows_before=rows_before, rows_after=rows_after, output_initialised=untied_out,
                        output_bias_initialised=bias is not None)
    for new, pieces in zip(new_ids, piece_ids, strict=True):
        known = [p for p in pieces if p != unk_id and p < base_vocab]
        index = torch.tensor(known, dtype=torch.long) if known else torch.arange(base_vocab)
        if not known:
            report.whole_mean.append(new)
        inp.weight[new] = inp.weight[index].mean(0)
        if untied_out:
            out.weight[new] = out.weight[index].mean(0)
        if bias is not None:
            bias[new] = bias[index].mean()
    return report
