"""The steps of ``domainlm publish``: check inputs, export, verify, write the card, put in place, push."""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from domainlm.artifacts import (
    atomic_dir,
    atomic_write_text,
    peek_manifest,
    read_manifest,
    sha256_file,
    why_not_replace,
    write_manifest,
)
from domainlm.config import to_dict
from domainlm.corpora.cards import list_cards, load_card
from domainlm.errors import ConfigError, DataError, DomainLMError
from domainlm.loading import RunInfo, base_source, load_base, load_run_model, load_run_tokenizer, read_run
from domainlm.publish import gguf as gguf_step
from domainlm.publish.card import CardInputs, render
from domainlm.publish.config import PublishConfig
from domainlm.publish.export import copy_if_present, export_adapter, export_merged
from domainlm.publish.push import find_token, push
from domainlm.publish.verify import verify_folder, write_reference
from domainlm.sources.hub import hub_offline
from domainlm.sources.resolution import PACKAGED
from domainlm.sources.tiny import TINY

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Fields whose values make two publications of one run different (reuse for --push needs them equal).
_SAME_FIELDS = ("merge", "dtype", "bench", "model_name", "license", "push", "gguf")
# Text used as the verification input when a run has no probe (adapt writes one whenever the corpus
# has a validation split).
_FALLBACK_TEXT = "The expression of the kinase was measured in cultured cells after treatment."


def _hub_id(value: Any) -> str | None:
    """``value`` if it looks like a Hub repo id (owner/name) and is not a local path."""
    if not isinstance(value, str) or not _HUB_ID.match(value) or Path(value).exists():
        return None
    return value


def _base_description(name: str) -> str:
    if name in TINY:
        return TINY[name][1] + "; random weights, for tests"
    for p in PACKAGED:
        if name in p.aliases or name == p.name:
            return p.description
    return ""


def _is_local_folder(name: str) -> bool:
    return ("/" in name or name.startswith(".")) and Path(name).is_dir()


def _display_name(name: str) -> str:
    """A base's name for the card: a local folder by its last component (its full path is machine-specific)."""
    return Path(name).name if _is_local_folder(name) else name


def _open_permissions(folder: Path) -> None:
    """Give the published folder the usual umask permissions (temporary files are created owner-only)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _license_from_folder(folder: str | None) -> str | None:
    """The ``license`` in a model folder's README.md card metadata, if any."""
    if not folder:
        return None
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        lic = ModelCard.load(readme).data.license
    except Exception:  # a malformed third-party card is not our problem to fail on; the license stays unknown
        return None
    return lic if isinstance(lic, str) and lic.strip() else None


def _corpus_card(run: dict[str, Any]) -> str | None:
    """The corpus card the run's corpus came from: its name, or the card its prepared folder records."""
    corpus = run.get("corpus") or {}
    cards = list_cards()
    if corpus.get("name") in cards:
        return corpus["name"]
    path = corpus.get("path")
    card = (peek_manifest(path).get("config") or {}).get("card") if path else None
    return card if card in cards else None


def _corpus_name(run: dict[str, Any]) -> str | None:
    """A short corpus name for the card (a card name, else the prepared folder's name, never a full path)."""
    corpus = run.get("corpus") or {}
    name = _corpus_card(run) or corpus.get("name")
    if isinstance(name, str) and ("/" in name or Path(name).is_dir()):
        return Path(name).name
    return name


def _corpus_license(run: dict[str, Any]) -> str | None:
    card = _corpus_card(run)
    if card is None:
        return None
    try:
        lic = load_card(card).get("license")
    except DomainLMError:
        return None
    return lic if isinstance(lic, str) else None


def _same_publication(out: Path, cfg: PublishConfig) -> bool:
    """True when ``out`` already holds a complete publication of the same run with the same settings."""
    try:
        man = read_manifest(out, "published")
    except DomainLMError:
        return False
    old = man.get("config") or {}
    try:
        same_run = Path(old.get("run_dir", "")).resolve() == Path(cfg.run_dir).resolve()
    except OSError:
        return False
    # publications made before --gguf existed hold no "gguf" key: they had none
    return same_run and all(old.get(k, [] if k == "gguf" else None) == getattr(cfg, k) for k in _SAME_FIELDS)


def _load_bench(folder: str) -> tuple[dict[str, Any] | None, str | None]:
    path = Path(folder) / "report.json"
    if not path.is_file():
        return None, (f"'bench': {folder} holds no report.json; pass the --out folder of `domainlm bench` (or drop "
                      "--bench)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"'bench': {path} is not valid JSON ({exc}); re-run `domainlm bench`"
    if not isinstance(report, dict) or not isinstance(report.get("tasks", []), list):
        return None, f"'bench': {path} is not a bench report (expected an object with a 'tasks' list)"
    return report, None


def _check(cfg: PublishConfig) -> tuple[RunInfo, dict[str, Any] | None, bool]:
    """Every input problem at once; returns the run, the bench report and whether ``out`` is reused."""
    problems: list[str] = []
    run_dir, out = Path(cfg.run_dir), Path(cfg.out)
    info, run_error = None, None
    try:
        info = read_run(run_dir)
    except DomainLMError as exc:
        run_error = exc
    reuse = False
    if out.exists():
        if not out.is_dir():
            problems.append(f"'out': {out} is a file; choose a folder")
        elif run_dir.exists() and out.resolve() in (run_dir.resolve(), (run_dir / "final").resolve()):
            problems.append(f"'out': {out} is the run folder itself; choose another folder")
        elif refused := why_not_replace(out, ("published",), inputs=(run_dir, cfg.bench)):
            problems.append(f"'out': {refused}")  # even with --overwrite: never delete what domainlm did not write
        elif any(out.iterdir()) and not cfg.overwrite:
            if cfg.push and _same_publication(out, cfg):
                reuse = True
            else:
                problems.append(f"'out': {out} exists and is not empty; pass --overwrite to replace it, or choose "
                                "another folder")
    if cfg.push and not cfg.dry_run and find_token()[0] is None:
        problems.append("'push': uploading needs a Hugging Face token with write access; set HF_TOKEN or run "
                        "`hf auth login` (or add --dry-run to see what would be uploaded)")
    if cfg.push and not cfg.dry_run and hub_offline():
        problems.append("'push': HF_HUB_OFFLINE is set (domainlm's Makefile sets it), so nothing can be uploaded; "
                        "run the command with HF_HUB_OFFLINE=0")
    bench = None
    if cfg.bench:
        bench, why = _load_bench(cfg.bench)
        if why:
            problems.append(why)
    if info is not None and not cfg.merge and not info.is_adapter:
        problems.append("'merge': --no-merge exports a LoRA adapter alone, but this run trained all weights "
                        "(method: full); drop --no-merge")
    if info is not None:
        problems += gguf_step.problems(info, gguf_step.parse_types(cfg.gguf)[0], merge=cfg.merge)
    if run_error is not None:
        if not problems:
            raise run_error
        problems.insert(0, str(run_error))
    if problems:
        raise ConfigError(problems)
    assert info is not None
    return info, bench, reuse


def _reference_probe(info: RunInfo, tokenizer: Any, scratch: Path) -> tuple[Path, str]:
    """The run's probe, or (for runs without one) fp32 logits of the unmerged run model on a fixed text."""
    if info.probe is not None:
        return info.probe, "final/probe.safetensors (the trained model's logits, written by adapt)"
    log.warning("%s has no probe.safetensors: verifying against the run model loaded in this process", info.final)
    ids = tokenizer(_FALLBACK_TEXT, return_tensors="pt")["input_ids"][:, :64]
    model, _ = load_run_model(info, merge=False)
    return write_reference(model, ids, scratch / "reference.safetensors"), "the run's model loaded unmerged here"


def run(cfg: PublishConfig) -> dict[str, Any]:
    info, bench, reuse = _check(cfg)
    out = Path(cfg.out)
    if reuse:
        print(f"{out} already holds a verified publication of {cfg.run_dir} with these settings: pushing it as it "
              "is (pass --overwrite to export again)")
        result = read_manifest(out, "published")
    else:
        result = _publish(cfg, info, bench)
    result["out"] = str(out)
    if cfg.push:
        result["push"] = push(out, cfg.push, private=cfg.private, dry_run=cfg.dry_run,
                              commit_message=f"Upload {result.get('card', {}).get('model_name') or out.name} "
                                             "(published with domainlm)")
    return result


def _publish(cfg: PublishConfig, info: RunInfo, bench: dict[str, Any] | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(cfg.out)
    run = info.manifest
    base = run.get("base") or {}
    base_name = str(base.get("name") or info.base_model.get("model") or (run.get("config") or {}).get("model"))
    base_path = None
    if info.is_adapter:
        src = base_source(info)
        base_path = src.path
        base_hub = _hub_id(base.get("hub_id")) or _hub_id(src.hub_id) or _hub_id(info.base_model.get("hub_id"))
    else:
        base_hub = _hub_id(base.get("hub_id"))
    license_, license_source = cfg.license, "set at publish time" if cfg.license else ""
    if not license_ and base.get("license"):
        license_, license_source = base["license"], f"inherited from the base model {base_hub or base_name}"
    if not license_:
        found = _license_from_folder(base_path or base.get("path"))
        if found:
            license_, license_source = found, "inherited from the base model's card"
    if not license_:
        log.warning("the base model's license is not known: the card says so and leaves `license` for you to "
                    "fill in (or pass --license)")
    tokenizer = load_run_tokenizer(info)
    added = sum(1 for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if not t.special)
    corpus_name = _corpus_name(run)
    if corpus_name:
        # The card shows the short name; the manifest keeps the full path the run recorded.
        run = {**run, "corpus": {**(run.get("corpus") or {}), "name": corpus_name}}
    model_name = cfg.model_name or (cfg.push.split("/")[-1] if cfg.push else out.resolve().name)
    token = find_token()[0]
    adapter = info.is_adapter and not cfg.merge

    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="domainlm-publish-") as scratch:
        if adapter:
            export = export_adapter(info, tmp, cfg.dtype, base_hub)
        else:
            export = export_merged(info, tmp, cfg.dtype)
        probe, reference = _reference_probe(info, tokenizer, Path(scratch))
        verify_base = _held_base(info, Path(scratch)) if adapter else base_path
        log.info("verifying %s in a fresh Python process (plain transformers)", out)
        verification = verify_folder(tmp, probe=probe, objective=info.objective, dtype=cfg.dtype,
                                     reference_tokenizer=info.final, adapter=adapter, base_path=verify_base,
                                     tolerance=cfg.tolerance, timeout=cfg.verify_timeout, secrets=(token,))
        verification["reference"] = reference
        if not verification["passed"]:
            raise DomainLMError(f"the export of {info.run_dir} failed verification, so nothing was written to "
                                f"{out}: " + "; ".join(verification["failures"])
                                + ". If a lower-precision --dtype is the cause, export float32 or raise --tolerance "
                                  "after checking the model's outputs yourself.")
        gguf_files = gguf_step.write_gguf_files(
            tmp, gguf_step.file_stem(model_name), gguf_step.parse_types(cfg.gguf)[0], probe=probe, reference_tokenizer=info.final,
            tolerance=cfg.tolerance, timeout=cfg.verify_timeout) if cfg.gguf else []
        images = {}
        if copy_if_present(info.run_dir / "curves.png", tmp / "curves.png"):
            images["curves"] = "curves.png"
        if cfg.bench and copy_if_present(Path(cfg.bench) / "comparison.png", tmp / "comparison.png"):
            images["comparison"] = "comparison.png"
        if cfg.bench:
            copy_if_present(Path(cfg.bench) / "report.json", tmp / "bench_report.json")
        inputs = CardInputs(
            model_name=model_name, run=run, objective=info.objective, method=info.method, export=export,
            verification=verification, dtype=cfg.dtype, base_name=_display_name(base_name), base_hub_id=base_hub,
            base_description=_base_description(base_name) or ("a local model folder" if _is_local_folder(base_name)
                                                               else ""), license=license_, license_source=license_source,
            base_from_gguf=base.get("gguf_file"), bench=bench, added_tokens=added, repo_id=cfg.push, images=images,
            corpus_license=_corpus_license(run), gguf=gguf_files)
        card_text = render(inputs)
        atomic_write_text(tmp / "README.md", card_text)
        _check_card(tmp / "README.md")
        files = [{"path": p.relative_to(tmp).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()]
        manifest = write_manifest(
            tmp, "published", config=to_dict(cfg),
            inputs={"run_dir": str(info.run_dir.resolve()),
                    "run_manifest_sha256": sha256_file(info.run_dir / "manifest.json"),
                    "bench_report_sha256": sha256_file(Path(cfg.bench) / "report.json") if cfg.bench else None},
            export=export, verification=verification, files=files, gguf=gguf_files,
            card={"path": "README.md", "model_name": model_name, "base_model": base_hub, "license": license_,
                  "license_source": license_source or "unknown: fill it in"},
            flops=(run.get("flops") or {}).get("total"), wall_time_s=time.perf_counter() - t0,
            notes=[f"verified: a fresh process reloaded this folder with plain transformers and matched the run's "
                   f"logits (max |diff| {verification['max_abs_diff']:.3g} <= {verification['tolerance_abs']:.3g})"])
        _open_permissions(tmp)
    _summary(out, manifest)
    return manifest


def _held_base(info: RunInfo, scratch: Path) -> str:
    """The base folder an adapter export is verified on: the checkpoint itself, or, when the run held its frozen
    base in another precision (qlora: 4-bit NF4; bf16-frozen LoRA), those exact values written in fp32 here, so
    the check compares the adapter against the model that was trained (see domainlm.quant.dequantized_base)."""
    source = base_source(info)
    if (info.base_model.get("storage") or "float32") == "float32":
        return source.path
    folder = scratch / "held-base"
    load_base(info).save_pretrained(str(folder))
    return str(folder)


def _check_card(path: Path) -> None:
    """The card must parse back with huggingface_hub (the Hub's own validate() needs the network)."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(path)
    except Exception as exc:  # a card we wrote that does not parse is a bug; say which file
        raise DataError(f"the model card {path} does not parse with huggingface_hub: {exc}") from None
    if card.data.model_name is None and card.data.eval_results:
        raise DataError(f"the model card {path} has eval results but no model name")


def _summary(out: Path, m: dict[str, Any]) -> None:
    v, e = m["verification"], m["export"]
    size = sum(f["bytes"] for f in m["files"])
    print(f"published: {out}  ({e['kind']}, {m['config']['dtype']}, {len(m['files']) + 1} files, {size / 1e6:.1f} MB)\n"
          f"  verified in a fresh process with plain transformers: max |logit diff| {v['max_abs_diff']:.3g} over "
          f"{v['tokens']} tokens (allowed {v['tolerance_abs']:.3g}), top-1 agreement {v['top1_agreement']:.1%}\n"
          + "".join(line + "\n" for line in gguf_step.summary_lines(m.get("gguf") or []))
          + f"  card: {out / 'README.md'}  (license: {m['card']['license'] or 'NOT KNOWN - fill it in'})")
