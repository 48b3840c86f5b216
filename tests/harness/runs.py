"""Real tiny run folders shared by the publish, merge, generate and GGUF tests: made by the real ``domainlm corpus
prepare`` and ``domainlm adapt`` (3 steps on a few dozen generated documents), the shared ones built once a session."""

from __future__ import annotations

import json
from pathlib import Path

DOMAIN_WORDS = ["proteasome", "phosphorylation", "kinase"]


def extended_base(folder: Path) -> Path:
    """tiny-llama with three domain words added to its tokenizer and embeddings resized (vocab extend)."""
    from domainlm.sources.load import load_model, load_tokenizer
    from domainlm.sources.resolution import resolve

    if (folder / "config.json").is_file():
        return folder
    src = resolve("tiny-llama")
    tok = load_tokenizer(src)
    model, _ = load_model(src, "causal")
    tok.add_tokens(DOMAIN_WORDS)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _write_text_corpus(folder: Path) -> Path:
    """Varied biomedical-sounding documents (seeded), so deduplication keeps most of them."""
    import random

    rng = random.Random(0)
    words = ("protein cell kinase pathway expression receptor binding assay mutation tumour patients dose "
             "inhibitor membrane signalling degradation western blot cohort trial enzyme substrate").split()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "docs.jsonl"
    docs = [" ".join(rng.choice(words + DOMAIN_WORDS) for _ in range(rng.randint(30, 60))).capitalize() + "."
            for _ in range(60)]
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    return path


def make_run(out: Path, *, method: str = "lora", model: str = "tiny-llama", train_embeddings: bool = False,
             steps: int = 3, general: bool = True) -> Path:
    """A finished run folder of a tiny model, made by the real `domainlm corpus prepare` and `domainlm adapt`.

    ``general`` tracks the shipped general-English sample, so the run records forgetting numbers.
    """
    from domainlm.adapt import adapt
    from domainlm.corpora import prepare

    corpus = out.parent / f"{out.name}-corpus"
    if not (corpus / "manifest.json").is_file():
        prepare(inputs=[str(_write_text_corpus(out.parent / f"{out.name}-docs"))], model=model, out=str(corpus),
                block_size=64, validation_fraction=0.1, workers=1)
    adapt(model=model, corpus=str(corpus), out=str(out), max_steps=steps, batch_size=2, eval_every=0,
          eval_batches=2, save_every=0, method=method, train_embeddings=train_embeddings, lora_r=4,
          general_eval="general-english-sample" if general else None, bf16="off")
    return out


def shared_lora_run(session_dir: Path) -> Path:
    """A LoRA run of tiny-llama with an extended vocabulary (embeddings trained fully), built once a session."""
    folder = session_dir / "publish" / "lora-run"
    if not (folder / "manifest.json").is_file():
        base = extended_base(session_dir / "publish" / "tiny-llama-extended")
        make_run(folder, method="lora", model=str(base), train_embeddings=True)
    return folder


def shared_full_run(session_dir: Path) -> Path:
    """A full-training run of tiny-llama, built once a session."""
    folder = session_dir / "publish" / "full-run"
    if not (folder / "manifest.json").is_file():
        make_run(folder, method="full", model="tiny-llama", general=False)
    return folder


def shared_published_full(session_dir: Path) -> Path:
    from domainlm.publish import publish

    out = session_dir / "publish" / "published-full"
    if not (out / "manifest.json").is_file():
        publish(run_dir=str(shared_full_run(session_dir)), out=str(out))
    return out
