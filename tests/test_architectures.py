"""The architecture matrix (issue 20): every family users adapt, as a tiny random model, through each feature.

Per architecture (2 layers, hidden 64, the byte-level or ESM tokenizer of domainlm.sources):

* ``masking``: a token's loss is unchanged by an unrelated document packed in front of it (1e-5), on the
  fused / masked-only head and on the model's own logits; without the document mask it does change.
* ``head``: our loss (fused causal head, or the MLM head run at masked positions only) equals the model's own
  ``labels=`` loss and gradients, on one document longer than the sliding windows; a family whose logits the
  fused head cannot reproduce (Gemma 2's soft-capping) has it switched off with a logged reason.
* ``train``: 3 steps of full training and 3 of LoRA with the default targets lower the loss (held out, same
  sequences and masks before and after), and LoRA wraps the family's attention and MLP projections, fused
  ones included.
* ``resume``: a run interrupted after its step-2 checkpoint and resumed ends with the uninterrupted weights
  (full training and LoRA).
* ``publish``: the full run publishes, reloads with plain transformers in a fresh process and passes the
  logits check.
* ``bench``: one native task and the perplexity task run on the adapted model.

The default tier runs masking, head and publish for every architecture; train, resume and bench are in the
slow tier (``Arch.slow``), and so is ``masking_flex``, the masking cell on adapt's ``attention: flex`` path
(refused on CPU by adapt at start-up, where torch has no FlexAttention backward).

experiments/architectures.py runs this file and turns its results into the table in docs/models.md. Adapt runs in
process (domainlm.adapt.adapt) on one prepared corpus per tokenizer, to keep the default tier within ~3
minutes on 2 cores.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from harness.architectures import ARCHS, Arch

from domainlm.lm_loss import IGNORE, causal_labels, loss_sum, split_head

SUITE = str(Path(__file__).parent / "fixtures" / "bench" / "suite")

BY_NAME = {a.name: a for a in ARCHS}
_COMMON = {"causal": {"num_hidden_layers": 2, "max_position_embeddings": 128, "pad_token_id": 0, "bos_token_id": 1,
                      "eos_token_id": 2},
           "masked": {"num_hidden_layers": 2, "max_position_embeddings": 128, "pad_token_id": 0},
           "protein": {"num_hidden_layers": 2}}
TRAIN = dict(batch_size=2, eval_batches=2, eval_every=0, log_every=1, seed=0, bf16="off", lr=1e-2, lora_r=4,
             lora_alpha=8, lora_dropout=0.0, warmup_ratio=0.0, schedule="constant", max_steps=3, save_every=0)


def arch_param(arch: Arch, feature: str):
    marks = [pytest.mark.slow] if feature in arch.slow else []
    return pytest.param(arch.name, id=arch.name, marks=marks)


def params(feature: str):
    return [arch_param(a, feature) for a in ARCHS]


# ----------------------------------------------------------------------------------------------------
# tiny models and corpora, built once per session
# ----------------------------------------------------------------------------------------------------

def _tokenizer(objective: str, folder: Path):
    if objective == "protein":
        from transformers import EsmTokenizer

        from domainlm.sources.tiny import ESM_VOCAB

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
        return EsmTokenizer(vocab_file=str(folder / "vocab.txt"))
    from domainlm.sources.tiny import byte_level_tokenizer

    return byte_level_tokenizer(objective)


def model_folder(name: str, root: Path) -> Path:
    """A tiny random model of architecture ``name`` with its tokenizer, saved as a model folder adapt loads."""
    import transformers

    arch = BY_NAME[name]
    if not hasattr(transformers, arch.config_class):
        pytest.skip(f"transformers {transformers.__version__} has no {arch.config_class}")
    folder = root / "models" / name
    if (folder / "config.json").is_file():
        return folder
    tok = _tokenizer(arch.objective, root / "models" / f"{name}-vocab")
    config = getattr(transformers, arch.config_class)(vocab_size=len(tok), **{**_COMMON[arch.objective],
                                                                               **arch.config})
    auto = transformers.AutoModelForCausalLM if arch.objective == "causal" else transformers.AutoModelForMaskedLM
    torch.manual_seed(0)
    model = auto.from_config(config)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


@pytest.fixture(scope="session")
def arch_root(session_dir: Path) -> Path:
    return session_dir / "architectures"


def _text_docs(path: Path) -> Path:
    import random

    rng = random.Random(0)
    words = ("protein cell kinase pathway expression receptor binding assay mutation tumour patients dose "
             "inhibitor membrane signalling degradation cohort trial enzyme substrate").split()
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))).capitalize() + "." for _ in range(48)]
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    return path


def corpus_for(name: str, root: Path) -> Path:
    """One prepared corpus per tokenizer (causal bytes, masked bytes, ESM), shared by every architecture."""
    objective = BY_NAME[name].objective
    out = root / "corpora" / objective
    folder = model_folder(next(a.name for a in ARCHS if a.objective == objective), root)
    if objective != "protein":
        # A family whose tokenizer class rebuilds the same vocabulary with other rules (transformers' Qwen2 tokenizer
        # adds NFC and its own split pattern) gives other ids for some texts: adapt refuses a corpus tokenised by
        # another tokenizer, so such a family gets its own corpus.
        from transformers import AutoTokenizer

        from domainlm.corpora.tokenizer_plan import tokenizer_fingerprint

        own = model_folder(name, root)
        if tokenizer_fingerprint(AutoTokenizer.from_pretrained(own)) != tokenizer_fingerprint(
                AutoTokenizer.from_pretrained(folder)):
            out, folder = root / "corpora" / name, own
    if (out / "manifest.json").is_file():
        return out
    if objective == "protein":
        from domainlm.corpora.run import prepare_card

        prepare_card("uniprot-sample", str(folder), out, block_size=64)
    else:
        from domainlm.corpora import prepare

        prepare(inputs=[str(_text_docs(root / "corpora" / "docs.jsonl"))], model=str(folder), out=str(out),
                block_size=64, validation_fraction=0.1, workers=1)
    return out


@pytest.fixture(autouse=True)
def _tier(request, record_property):
    """Which tier ran the cell, for the docs/models.md table (experiments/architectures.py)."""
    record_property("tier", "slow" if request.node.get_closest_marker("slow") else "default")


@pytest.fixture(autouse=True)
def _no_peak_timing(monkeypatch):
    """adapt times a 1024^2 matmul for its MFU figure (0.5 s a run); the matrix does not look at MFU."""
    import domainlm.flops

    monkeypatch.setattr(domainlm.flops, "measure_matmul_peak", lambda *a, **k: 1e12)


def run_adapt(name: str, root: Path, method: str, out: Path | None = None, **extra) -> Path:
    """A finished adapt run of the tiny ``name`` model (cached per session when ``out`` is not given)."""
    from domainlm.adapt import adapt

    run = out or root / "runs" / f"{name}-{method}"
    if out is None and (run / "manifest.json").is_file() and json.loads((run / "manifest.json").read_text()).get(
            "complete"):
        return run
    adapt(model=str(model_folder(name, root)), corpus=str(corpus_for(name, root)), out=str(run), method=method,
          overwrite=out is None and run.exists(), **{**TRAIN, **extra})
    return run


def train_losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "train"]


def load(name: str, root: Path):
    """The model exactly as adapt prepares it for full training (attention choice, ESM's token dropout off)."""
    from domainlm.adapt.config import AdaptConfig
    from domainlm.adapt.setup import prepare_model

    prepared = prepare_model(AdaptConfig(model=str(model_folder(name, root))))
    return prepared.model.eval(), "causal" if prepared.objective == "causal" else "masked"


def _ids(vocab: int, objective: str, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low, high = (4, 24) if vocab < 40 else (5, min(vocab, 250))
    return torch.randint(low, high, (1, n), generator=gen)


def _labels(ids: torch.Tensor, docs: torch.Tensor, objective: str, start: int, every: int = 3) -> torch.Tensor:
    if objective == "causal":
        return causal_labels(ids, docs)
    labels = torch.full_like(ids, IGNORE)
    labels[0, start::every] = ids[0, start::every]
    return labels


# ----------------------------------------------------------------------------------------------------
# the cells
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", params("masking"))
def test_masking(name, arch_root, record_property):
    """A token's loss is unchanged by an unrelated document packed in front (fused head and plain logits)."""
    model, objective = load(name, arch_root)
    check_masking(model, objective)
    record_property("note", f"{model.config._attn_implementation} attention")


@pytest.mark.slow
@pytest.mark.parametrize("name", [a.name for a in ARCHS])
def test_masking_flex(name, arch_root, record_property):
    """The masking cell on the FlexAttention path (adapt's ``attention: flex``), where the family has one."""
    import dataclasses

    from domainlm.adapt.config import AdaptConfig
    from domainlm.adapt.setup import prepare_model
    from domainlm.errors import ConfigError

    if "attention" not in {f.name for f in dataclasses.fields(AdaptConfig)}:
        pytest.skip("adapt has no 'attention' setting in this checkout")
    try:
        prepared = prepare_model(AdaptConfig(model=str(model_folder(name, arch_root)), attention="flex"))
    except ConfigError as exc:  # the family has no FlexAttention in transformers: adapt refuses at start-up
        record_property("refused", str(exc).splitlines()[-1].strip(" -"))
        return
    check_masking(prepared.model.eval(), "causal" if prepared.objective == "causal" else "masked")
    record_property("note", f"{prepared.model.config._attn_implementation} attention")


def check_masking(model, objective: str) -> None:
    from domainlm.attention import flex_inputs
    from domainlm.lm_loss import family_inputs, model_inputs

    vocab = model.config.vocab_size
    target, other = _ids(vocab, objective, 14, 1), _ids(vocab, objective, 9, 2)
    packed = torch.cat([other, target], dim=1)
    packed_docs = torch.cat([torch.zeros_like(other), torch.ones_like(target)], dim=1)
    start = other.shape[1]
    alone_docs = torch.zeros_like(target)
    alone_labels = _labels(target, alone_docs, objective, 0)
    packed_labels = _labels(packed, packed_docs, objective, start)
    packed_labels[:, :start] = IGNORE  # only the target document's tokens are compared

    @torch.no_grad()
    def token_losses(ids, docs, labels, document_mask=True):
        """Per-token losses from the model's own logits, fed exactly what loss_sum feeds it."""
        kwargs = flex_inputs(model, family_inputs(model, model_inputs(ids, docs, objective, document_mask), docs),
                             docs)
        logits = model(**kwargs).logits.float()[0]
        keep = labels[0] != IGNORE
        return torch.nn.functional.cross_entropy(logits[keep], labels[0][keep], reduction="none")

    alone = token_losses(target, alone_docs, alone_labels)
    behind = token_losses(packed, packed_docs, packed_labels)
    assert alone.numel() == behind.numel() >= 4
    assert torch.allclose(alone, behind, rtol=0, atol=1e-5), (alone - behind).abs().max()
    # The fused / masked-only head: the target document's summed loss is unchanged too.
    split = split_head(model, objective)
    with torch.no_grad():
        fused_alone = float(loss_sum(model, objective, target, alone_labels, alone_docs, split=split))
        fused_behind = float(loss_sum(model, objective, packed, packed_labels, packed_docs, split=split))
    assert fused_behind == pytest.approx(fused_alone, abs=1e-5 * alone.numel())
    assert fused_alone == pytest.approx(float(alone.sum()), rel=1e-5)
    # The check can fail: without the document mask the document in front leaks in.
    leaked = token_losses(packed, packed_docs, packed_labels, document_mask=False)
    assert (leaked - alone).abs().max() > 1e-4


@pytest.mark.parametrize("name", params("head"))
def test_head(name, arch_root, caplog, record_property):
    """Our loss (fused / masked-only head, document-mask inputs) equals the model's own loss and gradients."""
    model, objective = load(name, arch_root)  # in eval mode: no dropout noise (gradients still flow)
    ids = _ids(model.config.vocab_size, objective, 24, 3)  # longer than every sliding window (8)
    docs = torch.zeros_like(ids)
    labels = _labels(ids, docs, objective, 1, every=2)
    with caplog.at_level(logging.INFO, logger="domainlm.lm_loss"):
        split = split_head(model, objective)
    arch = BY_NAME[name]
    if not arch.fused:
        assert split is None and "soft-caps its final logits" in caplog.text
        record_property("note", "off (logged: the model soft-caps its logits); its own logits are used")
    else:
        assert split is not None
        record_property("note", "fused head" if objective == "causal" else "masked positions only")
    count = int((labels != IGNORE).sum())
    ours = loss_sum(model, objective, ids, labels, docs, scale=1.0 / count, split=split)
    own = model(input_ids=ids, labels=ids if objective == "causal" else labels).loss
    assert float(ours.detach()) == pytest.approx(float(own.detach()), rel=1e-5)
    ours.backward()
    mine = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    own.backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(mine[n], p.grad, atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize("name", params("train"))
def test_train(name, arch_root, record_property):
    """3 steps of full training and of LoRA lower the loss; LoRA wraps the family's projections."""
    from safetensors import safe_open

    full = run_adapt(name, arch_root, "full")
    lora = run_adapt(name, arch_root, "lora", lr=3e-2)
    for run in (full, lora):
        # Training batches differ step to step (and MLM masks with them), so the loss is compared where it is
        # comparable: adapt's held-out evaluation before and after, on the same sequences and masks.
        metrics = json.loads((run / "manifest.json").read_text())["metrics"]
        before, after = metrics["initial"]["domain_loss"], metrics["final"]["domain_loss"]
        assert after < before, (run.name, before, after, train_losses(run))
    with safe_open(str(lora / "final" / "adapter_model.safetensors"), "pt") as f:
        wrapped = {k.split(".lora_A")[0].rsplit(".", 1)[-1] for k in f.keys() if ".lora_A" in k}
    assert BY_NAME[name].lora <= wrapped, f"LoRA left out {sorted(BY_NAME[name].lora - wrapped)}"
    record_property("note", "LoRA wraps " + ", ".join(sorted(wrapped)))
    manifest = json.loads((lora / "manifest.json").read_text())
    assert manifest["parameters"]["trainable"] < manifest["parameters"]["total"] / 4


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("name", params("resume"))
def test_resume(name, arch_root, tmp_path, monkeypatch):
    """Stopped after the step-2 checkpoint (mid step 3) and resumed: the weights of the run without the stop,
    for full training and for LoRA (whose frozen base is not in the checkpoint)."""
    from safetensors.torch import load_file

    import domainlm.adapt.run as engine

    def fault(kind: str, step: int) -> None:
        if (kind, step) == ("step", 3):
            raise _Interrupted

    for method, weights, extra in (("full", "model.safetensors", {}),
                                   ("lora", "adapter_model.safetensors", {"lr": 3e-2})):
        reference = run_adapt(name, arch_root, method, **extra)
        cut = tmp_path / method
        with monkeypatch.context() as patch:
            patch.setattr(engine, "fault_point", fault)
            with pytest.raises(_Interrupted):
                run_adapt(name, arch_root, method, out=cut, save_every=2, **extra)
        run_adapt(name, arch_root, method, out=cut, resume=True, save_every=2, **extra)
        assert train_losses(cut)[-1] == train_losses(reference)[-1], method
        a = load_file(str(reference / "final" / weights))
        b = load_file(str(cut / "final" / weights))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), method


@pytest.mark.parametrize("name", params("publish"))
def test_publish(name, arch_root, record_property):
    """The run publishes; plain transformers reloads it in a fresh process and reproduces its logits."""
    from domainlm.publish import publish

    run = run_adapt(name, arch_root, "full")
    out = arch_root / "published" / name
    m = publish(run_dir=str(run), out=str(out), overwrite=True)
    v = m["verification"]
    assert v["passed"] and v["fresh_process"] and v["domainlm_modules"] == [], v.get("failures")
    assert v["max_abs_diff"] <= v["tolerance_abs"] and v["top1_agreement"] == 1.0
    assert v["loaded_class"] == json.loads((out / "config.json").read_text())["architectures"][0]
    record_property("note", f"{v['loaded_class']}, max logit diff {v['max_abs_diff']:.0e}")


@pytest.mark.parametrize("name", params("bench"))
def test_bench(name, arch_root, tmp_path):
    """One native task (zero-shot QA for causal, a probe for masked, a property probe for proteins) and
    perplexity run on the adapted model's run folder."""
    from domainlm.bench import bench

    run = run_adapt(name, arch_root, "full")
    objective = BY_NAME[name].objective
    if objective == "protein":
        report = bench(model=str(run), suite="protein", tasks=["property", "perplexity"], out=str(tmp_path / "b"),
                       max_examples=4, bootstrap=0, override=["perplexity.masked_max_tokens=40"])
    else:
        native = "qa" if objective == "causal" else "relation"
        report = bench(model=str(run), suite=SUITE, tasks=[native, "ppl"], out=str(tmp_path / "b"), bootstrap=0,
                       max_examples=8)
    tasks = {t["name"]: t for t in report["tasks"]}
    assert len(tasks) == 2
    for t in tasks.values():
        assert t["model"]["score"] is not None and t["model"]["score"] == t["model"]["score"]  # not NaN
    if objective == "causal":
        assert tasks["qa"]["model"]["mode"] == "zeroshot"
    ppl = next(iter(report["perplexity"].values()))["model"]
    assert 1 < ppl["per_token"] < 1e4
