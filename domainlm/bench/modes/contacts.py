"""Contact prediction from attention maps (Rao et al. 2020, "Transformer protein language models are
unsupervised structure learners").

Every attention map (layer x head) over the residues is symmetrised and corrected with the average
product correction (APC); an L1-regularised logistic regression over these features is fit on the
residue pairs of the train proteins (separation >= ``train_separation``) and scored on the test
proteins as long-range precision at L/5 (separation >= ``min_separation``). C = 0.15 is the
regularisation ESM's contact head was fit with.
"""

from __future__ import annotations

import logging
import warnings

from domainlm.bench.features import autocast, model_max_length
from domainlm.bench.loading import LoadedModel
from domainlm.bench.modes.result import ModeResult, RunContext, finish
from domainlm.errors import ConfigError
from domainlm.tasks.data import TaskData
from domainlm.tasks.metrics import precision_at_k
from domainlm.tasks.spec import TaskSpec

log = logging.getLogger(__name__)

L1_C = 0.15


def apc(x):
    """Average product correction over the last two axes (Dunn et al. 2008), as in ESM."""
    a1 = x.sum(-1, keepdims=True)
    a2 = x.sum(-2, keepdims=True)
    a12 = x.sum((-1, -2), keepdims=True)
    return x - a1 * a2 / a12


def symmetrize(x):
    return x + x.swapaxes(-1, -2)


def _eager(loaded: LoadedModel, spec: TaskSpec) -> None:
    """Attention weights come only from the eager implementation (SDPA never materialises them)."""
    setter = getattr(loaded.model, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter("eager")
        except (ValueError, NotImplementedError):
            pass


def residue_positions(loaded: LoadedModel, seq: str, max_length: int,
                      spaced: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and, per residue, the index of the token holding it (character-level tokenizers: 1:1).

    ``spaced`` tokenises "M K V ..." (text tokenizers; see TaskSpec.spaced): residue r is character 2r.
    """
    tok = loaded.tokenizer
    if getattr(tok, "is_fast", False):
        text = " ".join(seq) if spaced else seq
        step = 2 if spaced else 1
        enc = tok(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                  return_special_tokens_mask=True)
        pos = [-1] * len(seq)
        for t, ((a, b), sp) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True)):
            if not sp:
                for c in range(a, b):
                    if c % step == 0:
                        pos[c // step] = t
        return list(enc["input_ids"]), pos
    enc = tok(seq, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    content = [t for t, sp in enumerate(enc["special_tokens_mask"]) if not sp]
    pos = content[:len(seq)] + [-1] * max(0, len(seq) - len(content))
    return list(enc["input_ids"]), pos


def attention_features(loaded: LoadedModel, spec: TaskSpec, seq: str, ctx: RunContext):
    """[L, L, layers*heads] symmetrised, APC-corrected attention over residues (L = residues covered)."""
    import numpy as np
    import torch

    spaced = spec.spaced if spec.spaced is not None else loaded.kind != "protein"  # as TaskSpec.spaced, for PDB
    ids, pos = residue_positions(loaded, seq, model_max_length(loaded, spec.max_length), spaced=spaced)
    with torch.inference_mode(), autocast(ctx.device, ctx.bf16):
        out = loaded.model(input_ids=torch.tensor([ids], device=ctx.device), output_attentions=True)
    attn = getattr(out, "attentions", None)
    if not attn or attn[0] is None:
        raise ConfigError([f"task '{spec.task_name}' ({spec.source}) predicts contacts from attention maps, but "
                           f"model {loaded.spec} returned no attention outputs. Fix: use a transformer that "
                           "returns attentions with the eager attention implementation (ESM, BERT), or drop "
                           "the task with --tasks"])
    maps = torch.stack([a[0].float() for a in attn]).cpu().numpy()  # [layers, heads, T, T]
    covered = [i for i, p in enumerate(pos) if p >= 0]
    idx = np.asarray([pos[i] for i in covered])
    maps = maps[:, :, idx][:, :, :, idx]
    feats = apc(symmetrize(maps)).reshape(-1, len(idx), len(idx)).transpose(1, 2, 0)
    return feats, covered


def run_contacts(loaded: LoadedModel, spec: TaskSpec, data: TaskData, ctx: RunContext) -> ModeResult:
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    result = ModeResult(mode="probe")
    _eager(loaded, spec)
    xs, ys = [], []
    for ex in data.train:
        feats, covered = attention_features(loaded, spec, ex.text, ctx)
        contacts = ex.label[np.ix_(covered, covered)]
        i, j = np.triu_indices(len(covered), k=spec.train_separation)
        xs.append(feats[i, j])
        ys.append(contacts[i, j])
    x, y = np.concatenate(xs), np.concatenate(ys).astype(int)
    if len(set(y.tolist())) < 2:
        from domainlm.errors import DataError

        raise DataError(f"{data.files.get('train', data.files.get('test'))}: the train proteins of task "
                        f"'{spec.task_name}' have no residue pairs {'in' if y.any() else 'out of'} contact at "
                        f"separation >= {spec.train_separation}; add structures with contacts")
    clf = LogisticRegression(l1_ratio=1.0, C=L1_C, solver="liblinear", max_iter=500)  # L1, as ESM
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(1):  # small fit: BLAS threads only spin (see probe.py)
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    precisions = []
    cropped = 0
    for ex in data.test:
        feats, covered = attention_features(loaded, spec, ex.text, ctx)
        cropped += len(ex.text) - len(covered)
        n = len(covered)
        scores = clf.predict_proba(feats.reshape(n * n, -1))[:, 1].reshape(n, n)
        scores = (scores + scores.T) / 2
        precisions.append(precision_at_k(scores, ex.label[np.ix_(covered, covered)],
                                         min_separation=spec.min_separation))
    if cropped:
        result.notes.append(f"{cropped} residues beyond the model's length limit were left out")
    result.notes.append(f"logistic regression (L1, C={L1_C}) on {x.shape[1]} attention maps, "
                        f"{len(data.train)} train proteins")
    result.n_examples = len(data.train) + len(data.test)
    return finish(spec, data, [None] * len(data.test), [precisions], result)
