"""Untrusted model folders, hostile files and secrets: what domainlm refuses and what it never prints.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .procs import FAKE_TOKEN, Proc, Trial, last_line, no_traceback, quiet, time_limit

# ====================================================================================================
# Untrusted model folders and hostile files
# ====================================================================================================

class Evil:
    """Unpickling this creates ``path``: stands in for a pickle that runs code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def tiny_folder(dest: Path) -> Path:
    from domainlm.sources.resolution import resolve

    src = Path(resolve("tiny-llama").path)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    return dest


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _expect_source_error(fn: Callable[[], Any], *needles: str) -> tuple[bool, str]:
    from domainlm.errors import SourceError

    try:
        fn()
    except SourceError as exc:
        msg = str(exc)
        return all(n.lower() in msg.lower() for n in needles), msg
    except Exception as exc:  # anything else is a traceback for the user
        return False, f"{type(exc).__name__} (not a SourceError): {str(exc)[:200]}"
    return False, "loaded without complaint"


def untrusted_trials(work: Path, launcher: str = "fork", *, cli: bool = True) -> list[Trial]:
    """Pickle weights, remote code, configs that lie about the weights, damaged weights, hostile XML."""
    from domainlm.sources.load import load_model, load_tokenizer
    from domainlm.sources.resolution import resolve

    root = work / "untrusted"
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "CODE_RAN"
    rows: list[Trial] = []

    def row(name: str, tried: str, ok: bool, outcome: str, t0: float) -> None:
        ran = marker.exists()
        if ran:
            marker.unlink()
        rows.append(Trial("untrusted", name, None, tried, outcome + ("; CODE RAN" if ran else ""), ok and not ran,
                          time.monotonic() - t0))

    def cli_refuses(folder: Path, *needles: str) -> tuple[bool, str]:
        if not cli:
            return True, ""
        # a real corpus (prepared once, for the tokenizer every folder here copies): a missing one is a config
        # error that adapt reports before it opens the model, and the model's refusal is what is tested
        corpus = root / "corpus"
        if not (corpus / "manifest.json").is_file():
            from domainlm.corpora.run import prepare_card

            prepare_card("pubmed-sample", "tiny-llama", corpus, block_size=64)
        p = Proc(["adapt", "--model", str(folder), "--corpus", str(corpus), "--out", str(root / "run"),
                  "--max-steps", "1"], work / "logs", f"untrusted-{folder.name}", launcher=launcher)
        rc = p.wait()
        full = last_line(p.stderr, None)
        ok = rc == 1 and no_traceback(p.stderr) and all(n.lower() in full.lower() for n in needles)
        return ok, f"; `domainlm adapt --model` exits {rc}: {last_line(p.stderr)!r}"

    # 1. pickle-only weights whose unpickling would run code
    import torch

    t0 = time.monotonic()
    d = tiny_folder(root / "pickle-only")
    (d / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Evil(marker)}, d / "pytorch_model.bin")
    ok, msg = _expect_source_error(lambda: resolve(str(d)), "pickle", "execute")
    ok2, cli_msg = cli_refuses(d, "pickle")
    ok3, msg3 = _expect_source_error(lambda: load_model(str(d), allow_pickle=True), "unpickle")
    row("pickle-only weights", "folder with only pytorch_model.bin whose unpickling would create a file",
        ok and ok2 and ok3, f"refused: {msg!r}{cli_msg}; with --allow-pickle torch's weights-only loader refuses "
        f"it too: {msg3[:160]!r}", t0)

    # 2. safetensors next to a hostile pickle: the safetensors are used, the pickle is never opened
    t0 = time.monotonic()
    d = tiny_folder(root / "pickle-and-safetensors")
    torch.save({"x": Evil(marker)}, d / "pytorch_model.bin")
    try:
        load_model(str(d))
        ok, msg = True, "loaded from model.safetensors; the pickle was not opened"
    except Exception as exc:  # a refusal would also be safe, but the safe weights should be usable
        ok, msg = False, f"{type(exc).__name__}: {exc}"
    row("safetensors beside a pickle", "folder with model.safetensors and a hostile pytorch_model.bin", ok, msg, t0)

    # 3. remote code asked for by config.json / tokenizer_config.json
    for cfg_name in ("config.json", "tokenizer_config.json"):
        t0 = time.monotonic()
        d = tiny_folder(root / f"remote-code-{cfg_name.split('.')[0]}")
        (d / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
        key = "AutoModelForCausalLM" if cfg_name == "config.json" else "AutoTokenizer"
        _edit_json(d / cfg_name, auto_map={key: "evil.Evil" if cfg_name == "config.json" else ["evil.Evil", None]})
        ok, msg = _expect_source_error(lambda d=d: load_tokenizer(resolve(str(d))), "trust-remote-code")
        ok2, cli_msg = cli_refuses(d, "trust-remote-code")
        row(f"remote code ({cfg_name})", f"{cfg_name} with auto_map pointing at evil.py", ok and ok2,
            f"refused: {msg!r}{cli_msg}", t0)

    # 4. config.json lies about the weights
    lies = {"hidden_size": 32, "intermediate_size": 100, "vocab_size": 300, "num_key_value_heads": 2,
            "num_attention_heads": 8, "num_hidden_layers": 6, "model_type": "bert"}
    for key, value in lies.items():
        t0 = time.monotonic()
        d = tiny_folder(root / f"lie-{key}")
        cfg = d / "config.json"
        if key == "num_hidden_layers":
            _edit_json(cfg, num_hidden_layers=value)
        elif key == "model_type":
            _edit_json(cfg, model_type="bert", architectures=["BertForMaskedLM"])
        else:
            _edit_json(cfg, **{key: value})
        ok, msg = _expect_source_error(lambda d=d: load_model(str(d), "causal"), "config.json")
        ok2, cli_msg = cli_refuses(d, "config.json") if key in ("hidden_size", "num_hidden_layers") else (True, "")
        row(f"config lies: {key}", f"config.json says {key} = {value!r}; the safetensors were made with the real "
            "config", ok and ok2, f"{msg[:260]!r}{cli_msg}", t0)
    d = tiny_folder(root / "lie-two-layers")
    _edit_json(d / "config.json", num_hidden_layers=2)
    t0 = time.monotonic()
    ok, msg = _expect_source_error(lambda: load_model(str(d), "causal"), "layers")
    row("config lies: fewer layers", "config.json says 2 layers, the weights hold 4", ok, f"{msg[:200]!r}", t0)

    # 5. damaged weights
    for label, damage in (("truncated", lambda b: b[:5000]), ("garbage header", lambda b: b"\xff" * 64 + b[64:])):
        t0 = time.monotonic()
        d = tiny_folder(root / f"damaged-{label.replace(' ', '-')}")
        w = d / "model.safetensors"
        w.write_bytes(damage(w.read_bytes()))
        ok, msg = _expect_source_error(lambda d=d: load_model(str(d), "causal"))
        row(f"damaged weights ({label})", f"model.safetensors {label}", ok, f"{msg[:200]!r}", t0)

    # 6. hostile XML corpus files
    rows.extend(_hostile_xml(root))
    return rows


def _hostile_xml(root: Path) -> list[Trial]:
    """PubMed XML with an external entity (XXE) and with exponential entity expansion (billion laughs)."""
    from domainlm.errors import DomainLMError

    secret = root / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT\n")
    xxe = (f'<?xml version="1.0"?>\n<!DOCTYPE PubmedArticleSet [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
           "<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID><Article><ArticleTitle>T</ArticleTitle>"
           "<Abstract><AbstractText>Leak: &xxe; end of the abstract text here.</AbstractText></Abstract>"
           "</Article></MedlineCitation></PubmedArticle></PubmedArticleSet>\n")
    lol = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    laughs = (f'<?xml version="1.0"?>\n<!DOCTYPE PubmedArticleSet [<!ENTITY l0 "lol">{lol}]>\n'
              "<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>2</PMID><Article><ArticleTitle>T</ArticleTitle>"
              "<Abstract><AbstractText>&l9;</AbstractText></Abstract></Article></MedlineCitation></PubmedArticle>"
              "</PubmedArticleSet>\n")
    rows = []
    for name, text, tried in (("XXE.xml", xxe, "PubMed XML whose abstract references file:// of a local file"),
                              ("laughs.xml", laughs, "PubMed XML with 10^9-fold entity expansion (billion laughs)")):
        t0 = time.monotonic()
        path = root / name
        path.write_text(text)
        try:
            with time_limit(120), quiet():
                from domainlm.documents.readers import InputFile, ReaderOptions, SkipLog
                from domainlm.documents.registry import iter_documents

                skips = SkipLog()
                docs = [d for d, _, _ in iter_documents([InputFile(path, "pubmed-xml", path.stat().st_size, name)],
                                                        ReaderOptions(), skips)]
            leaked = any("TOP-SECRET" in d.text for d in docs)
            biggest = max((len(d.text) for d in docs), default=0)
            ok = not leaked and biggest < 1_000_000
            example = next((e for v in skips.examples.values() for e in v), "")
            outcome = (f"{len(docs)} documents (largest {biggest} characters), skips {dict(skips.counts)}"
                       + (f" ({example.split(': ', 1)[-1][:90]!r})" if example else "") + "; "
                       + ("THE LOCAL FILE'S TEXT IS IN A DOCUMENT" if leaked else
                          "no document contains the local file's text"))
        except DomainLMError as exc:
            ok, outcome = True, f"refused: {str(exc)[:200]!r}"
        except Exception as exc:  # a traceback (or a hang) is a failure
            ok, outcome = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        rows.append(Trial("untrusted", f"hostile XML ({name})", None, tried, outcome, ok, time.monotonic() - t0))
    return rows


# ====================================================================================================
# Secrets
# ====================================================================================================

def secrets_trial(work: Path, launcher: str = "fork") -> Trial:
    """Run prepare, adapt, publish (--push --dry-run) and three error paths with a fake Hub token in the
    environment and DEBUG logging; the token must appear in no output file, log or message."""
    t0 = time.monotonic()
    root = work / "secrets"
    shutil.rmtree(root, ignore_errors=True)
    logs = root / "logs"
    env = {"HF_TOKEN": FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_TOKEN, "DOMAINLM_LOG": "DEBUG",
           "TRANSFORMERS_VERBOSITY": "info"}
    small = ["--max-steps", "2", "--batch-size", "2", "--eval-batches", "1", "--bf16", "off", "--save-every", "1"]
    steps = [
        ("corpus prepare", ["corpus", "prepare", "--card", "pubmed-sample", "--model", "tiny-llama", "--block-size",
                            "64", "--shard-size", "64", "--out", str(root / "corpus")], {}, 0),
        ("adapt", ["adapt", "--model", "tiny-llama", "--corpus", str(root / "corpus"), "--out", str(root / "run"),
                   *small], {}, 0),
        ("publish --push --dry-run", ["publish", str(root / "run"), "--out", str(root / "published"), "--push",
                                      "someone/tiny-model", "--dry-run"], {}, 0),
        ("adapt, unknown Hub model (error)", ["adapt", "--model", "someone/not-a-cached-model", "--corpus",
                                              str(root / "corpus"),
                                              "--out", str(root / "err-run"), "--max-steps", "1"], {}, 1),
        ("publish --push while offline (error)", ["publish", str(root / "run"), "--out", str(root / "published"),
                                                  "--push", "someone/tiny-model"], {}, 2),
        ("publish --push to an unreachable Hub (error)", ["publish", str(root / "run"), "--out",
                                                          str(root / "published"), "--push", "someone/tiny-model"],
         {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}, 1),
    ]
    notes, problems = [], []
    for i, (label, argv, extra, want) in enumerate(steps):
        p = Proc(argv, logs, f"step-{i}", env={**env, **extra}, launcher=launcher)
        rc = p.wait()
        notes.append(f"{label}: exit {rc}")
        if rc != want:
            problems.append(f"{label} exited {rc}, expected {want}: {last_line(p.stderr)}")
        if not no_traceback(p.stderr):
            problems.append(f"{label} printed a traceback")
    scanned, size, hits = 0, 0, []
    needles = (FAKE_TOKEN.encode(), FAKE_TOKEN[3:24].encode())
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            size += len(data)
            if any(n in data for n in needles):
                hits.append(str(path.relative_to(root)))
    if hits:
        problems.append(f"the token appears in {hits}")
    outcome = (f"{'; '.join(notes)}. Scanned {scanned} files ({size / 1e6:.1f} MB: corpus, run, checkpoints, "
               f"manifests, card, stdout/stderr with DEBUG logs): token found in {len(hits)}")
    return Trial("secrets", "fake token in the environment", None,
                 "HF_TOKEN and HUGGING_FACE_HUB_TOKEN set to a fake token; prepare, adapt, publish --push --dry-run "
                 "and three failing commands", "; ".join([outcome] + problems), not problems, time.monotonic() - t0)
