"""merge: mergekit merges of tiny runs (exact ends, SLERP identity, LoRA = its merged weights, extended
vocabulary rows from the adapted model), one-line refusals, and --select never reading a test split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from harness.runs import shared_full_run, shared_lora_run  # the same real tiny runs as the publish tests

pytest.importorskip("mergekit")


@pytest.fixture(scope="module")
def full_run(session_dir: Path) -> Path:
    return shared_full_run(session_dir)


@pytest.fixture(scope="module")
def lora_run(session_dir: Path) -> Path:
    return shared_lora_run(session_dir)


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


def base_weights(spec: str) -> dict:
    from domainlm.sources.gguf import materialise
    from domainlm.sources.resolution import resolve

    return weights(Path(materialise(resolve(spec)).path))


def same(a: dict, b: dict, exact: bool = True) -> bool:
    import torch

    if set(a) != set(b):
        return False
    return all(torch.equal(a[k], b[k]) if exact else torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_weight_zero_is_the_base_and_one_the_adapted_model_exactly(full_run: Path, tmp_path: Path, method: str):
    from domainlm.merge import merge

    for w, expected in ((0.0, base_weights("tiny-llama")), (1.0, weights(full_run / "final"))):
        out = tmp_path / f"w{w}"
        manifest = merge(model=str(full_run), out=str(out), method=method, weight=w)
        assert same(weights(out / "final"), expected), (method, w)
        assert manifest["kind"] == "run" and manifest["merge"]["weights"] == {"adapted": w, "other": 1.0 - w}
    # weight 0.5 is neither end
    merge(model=str(full_run), out=str(tmp_path / "half"), method=method, weight=0.5)
    assert not same(weights(tmp_path / "half" / "final"), weights(full_run / "final"), exact=False)


def test_slerp_of_a_model_with_itself_is_that_model(full_run: Path, tmp_path: Path):
    import shutil

    from domainlm.merge import merge

    copy = tmp_path / "copy"  # the same model in another folder (mergekit refuses one folder given twice)
    shutil.copytree(full_run / "final", copy)
    merge(model=str(full_run), other=str(copy), out=str(tmp_path / "m"), method="slerp", weight=0.3)
    assert same(weights(tmp_path / "m" / "final"), weights(full_run / "final"), exact=False)


def test_merged_folder_is_a_run_that_bench_publish_and_generate_load(full_run: Path, tmp_path: Path):
    import torch

    from domainlm.loading import load_for_eval, read_run
    from domainlm.merge import merge

    out = tmp_path / "m"
    merge(model=str(full_run), out=str(out), method="ties", weight=0.5, density=0.5)
    info = read_run(out)
    assert info.method == "full" and info.probe is not None
    m = json.loads((out / "manifest.json").read_text())["merge"]
    assert m["method"] == "ties" and m["density"] == 0.5 and m["other"] == "tiny-llama" and "mergekit" in m["engine"]
    loaded = load_for_eval(str(out))
    from safetensors.torch import load_file

    probe = load_file(str(info.probe))
    # the merge probes the adapted run's own tokens (its 64 validation tokens), so publish checks the same text
    assert torch.equal(probe["input_ids"], load_file(str(read_run(full_run).probe))["input_ids"])
    with torch.no_grad():
        logits = loaded.model(input_ids=probe["input_ids"]).logits
    assert torch.allclose(logits, probe["logits"], atol=1e-5)


@pytest.mark.slow  # publish verifies in a fresh process: ~20 s idle
def test_a_merged_lora_run_publishes_with_the_merge_on_its_card(lora_run: Path, tmp_path: Path):
    from domainlm.merge import merge
    from domainlm.publish import publish

    merge(model=str(lora_run), out=str(tmp_path / "m"), method="slerp", weight=0.4)
    manifest = publish(run_dir=str(tmp_path / "m"), out=str(tmp_path / "pub"))
    assert manifest["verification"]["passed"]
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "| merged back into the base | slerp, weight 0.4 on the adapted model" in card
    assert "| method | LoRA" in card  # the source run's training method, not "full"


def test_lora_run_merges_as_its_merged_full_weights_and_added_rows_come_from_it(lora_run: Path, tmp_path: Path):
    """The LoRA run is merged into its base by hand with peft here; merging that folder gives the same model.
    Merged with the original tiny-llama (3 fewer rows), the added rows are the adapted model's own."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from domainlm.loading import read_run
    from domainlm.merge import merge
    from domainlm.sources.load import load_model
    from domainlm.sources.resolution import resolve

    info = read_run(lora_run)
    base_dir = Path(info.base_model["model"])  # the extended tiny-llama folder the run trained on
    base, _ = load_model(resolve(str(base_dir)), "causal")
    full = PeftModel.from_pretrained(base, str(info.final)).merge_and_unload()
    by_hand = tmp_path / "by-hand"
    full.save_pretrained(str(by_hand))
    AutoTokenizer.from_pretrained(str(info.final)).save_pretrained(str(by_hand))
    merge(model=str(lora_run), out=str(tmp_path / "a"), weight=0.5)
    merge(model=str(by_hand), other=str(base_dir), out=str(tmp_path / "b"), weight=0.5)
    assert same(weights(tmp_path / "a" / "final"), weights(tmp_path / "b" / "final"), exact=False)

    # extended vocabulary: merged with the original tiny-llama, rows past its vocabulary are the adapted ones
    manifest = merge(model=str(lora_run), other="tiny-llama", out=str(tmp_path / "c"), weight=0.5)
    merged, adapted, orig = weights(tmp_path / "c" / "final"), weights(by_hand), base_weights("tiny-llama")
    key = "model.embed_tokens.weight"
    n = orig[key].shape[0]
    assert merged[key].shape[0] == adapted[key].shape[0] == n + 3
    assert torch.equal(merged[key][n:], adapted[key][n:])
    assert torch.allclose(merged[key][:n], 0.5 * orig[key] + 0.5 * adapted[key][:n], atol=1e-6)
    assert manifest["merge"]["vocabulary"] == {"rows": n + 3, "shared_rows": n, "added_rows_from": "adapted"}


def test_a_mismatched_pair_fails_with_one_line(full_run: Path, tmp_path: Path, capsys):
    from domainlm.cli import main
    from domainlm.sources.gguf import materialise
    from domainlm.sources.resolution import resolve

    materialise(resolve("tiny-bert"))  # built (with its progress bar) before capturing
    capsys.readouterr()
    rc = main(["merge", str(full_run), "--other", "tiny-bert", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "cannot merge" in err and "tiny-bert" in err and "architectures" in err
    assert not (tmp_path / "x").exists()


def test_without_mergekit_merge_fails_at_once_naming_the_install(monkeypatch, tmp_path: Path, capsys):
    from domainlm.cli import main

    monkeypatch.setitem(sys.modules, "mergekit", None)
    monkeypatch.setitem(sys.modules, "mergekit.merge", None)
    rc = main(["merge", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "pip install 'domainlm[merge]'" in err


# ----------------------------------------------------------------------------------------------------
# --select: dev splits only
# ----------------------------------------------------------------------------------------------------

def _lm_task(folder: Path, name: str, role: str, dev: Path, test: Path) -> None:
    (folder / f"{name}.yaml").write_text(
        f"version: 1\nformat: jsonl\nfiles: {{dev: {dev}, test: {test}}}\nhead: lm\nmode: perplexity\n"
        f"role: {role}\nmetric: word_perplexity\nwindow: 32\nstride: 16\n")


def test_dev_split_holds_out_part_of_train_and_never_reads_test(tmp_path: Path):
    from domainlm.tasks.data import load_data
    from domainlm.tasks.suites import load_task

    rows = [{"text": f"sentence number {i} about kinase", "label": "a" if i % 2 else "b"} for i in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.yaml").write_text("version: 1\nformat: jsonl\nfiles: {train: train.jsonl, test: missing.jsonl}\n"
                                     "head: sequence\nmode: probe\nmetric: accuracy\n")
    data = load_data(load_task(tmp_path / "t.yaml"), split="dev", dev_fraction=0.25)  # missing.jsonl: never opened
    assert len(data.test) == 10 and len(data.train) == 30
    assert not {ex.id for ex in data.test} & {ex.id for ex in data.train}
    assert "test" not in data.files and any("held out" in n for n in data.notes)


def test_dev_split_of_a_task_that_trains_on_nothing_is_its_whole_train_split(tmp_path: Path):
    """A zero-shot task never trains, so all of its train split is unseen: it is scored whole (more power to
    see a guard loss than a fifth of it), and the test file is still never opened."""
    from domainlm.tasks.data import load_data
    from domainlm.tasks.suites import load_task

    rows = [{"text": f"is sentence {i} about kinase?", "label": "yes" if i % 2 else "no"} for i in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.yaml").write_text("version: 1\nformat: jsonl\nfiles: {train: train.jsonl, test: missing.jsonl}\n"
                                     "head: sequence\nmode: zeroshot\nmetric: accuracy\n"
                                     "prompt: '{text} Answer:'\nlabels: ['yes', 'no']\n")
    data = load_data(load_task(tmp_path / "t.yaml"), split="dev", dev_fraction=0.25, needs_train=False)
    assert len(data.test) == 40 and not data.train
    assert "test" not in data.files and any("all 40 records" in n for n in data.notes)


def test_dev_text_override_paths_are_absolute_when_the_out_folder_is_relative(tmp_path: Path, monkeypatch):
    """The quickstart's out folder is relative; a relative dev-text path in an override would resolve beside
    the suite's YAML and the selection would fail (it did, 2026-12-06)."""
    from domainlm.merge.select import dev_text_overrides
    from domainlm.tasks.suites import load_suite

    monkeypatch.chdir(tmp_path)
    Path("scratch").mkdir()
    specs = [s for s in load_suite("general") if s.head == "lm"]
    overrides, notes = dev_text_overrides(specs, None, Path("scratch"))
    paths = [o.split("=", 1)[1] for o in overrides if ".dev=" in o]
    assert paths and all(Path(p).is_absolute() and Path(p).is_file() for p in paths) and notes


def test_dev_split_of_a_test_ids_task_uses_only_the_records_outside_the_test_ids(tmp_path: Path):
    from domainlm.tasks.data import load_data
    from domainlm.tasks.suites import load_task

    rows = [{"id": f"r{i}", "text": f"record {i} on kinase", "label": "a" if i % 2 else "b"} for i in range(40)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "ids.txt").write_text("".join(f"r{i}\n" for i in range(20)))  # r0..r19 are the test split
    (tmp_path / "t.yaml").write_text("version: 1\nformat: jsonl\nfiles: {test: all.jsonl}\ntest_ids: ids.txt\n"
                                     "id_field: id\nhead: sequence\nmode: probe\nmetric: accuracy\n")
    data = load_data(load_task(tmp_path / "t.yaml"), split="dev", dev_fraction=0.25)
    used = {ex.id for ex in data.test} | {ex.id for ex in data.train}
    assert used == {f"r{i}" for i in range(20, 40)} and len(data.test) == 4  # stratified: round(0.25 * 10) per label


@pytest.mark.slow  # ~10 s alone, 30 s under load: a tiny run merged and scored at three weights
def test_select_never_reads_a_test_split(full_run: Path, tmp_path: Path, monkeypatch):
    """The test files here are not even valid JSON: any read of them would fail the selection. Every file the
    bench readers open is recorded, and none is a test file."""
    import domainlm.tasks.data as data_mod
    from domainlm.merge import merge

    suite = tmp_path / "suite"
    suite.mkdir()
    words = "the kinase binds the receptor and the cell grows while the protein folds".split()
    for name, role in (("dom", "domain"), ("guard", "general")):
        dev = suite / f"{name}_dev.jsonl"
        dev.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i])}) + "\n" for i in range(8)))
        test = suite / f"{name}_test.jsonl"
        test.write_text("{not json: a test split that must never be read\n")
        _lm_task(suite, name, role, dev, test)
    # a task in neither role, whose files do not exist: never read (before, every task of the suite was loaded,
    # and a real-data root holding only the domain and guard tasks' files failed the selection)
    _lm_task(suite, "unused", "domain", suite / "missing_dev.jsonl", suite / "missing_test.jsonl")
    opened: list[str] = []
    real = data_mod._read

    def spy(reader, path, spec, split, skipped):
        opened.append(str(path))
        return real(reader, path, spec, split, skipped)

    monkeypatch.setattr(data_mod, "_read", spy)
    manifest = merge(model=str(full_run), out=str(tmp_path / "sel"), select=True, weights=[0.0, 0.5, 1.0],
                     suite=str(suite), domain_tasks=["dom"], guard_tasks=["guard"], test=False, bootstrap=200)
    assert opened and not [p for p in opened if p.endswith("_test.jsonl") or "missing" in p]
    sel = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert (tmp_path / "sel" / "pareto.png").stat().st_size > 1000
    assert [p["weight"] for p in sel["points"]] == [0.0, 0.5, 1.0] and sel["split"] == "dev"
    allowed = [p for p in sel["points"] if p["allowed"]]
    best = max(allowed, key=lambda p: (p["domain_score"], -p["weight"]))
    assert sel["chosen_weight"] == best["weight"] == manifest["merge"]["weight"]
    assert sel["points"][0]["domain_score"] == 0.0  # weight 0 is the base itself


def test_bench_split_dev_writes_a_report_and_leaves_test_unread(tmp_path: Path):
    """`domainlm bench --split dev` on its own: the report says the dev split was scored; the test file is junk."""
    from domainlm.bench import bench

    suite = tmp_path / "suite"
    suite.mkdir()
    dev = suite / "dev.jsonl"
    dev.write_text("".join(json.dumps({"text": f"the kinase number {i} binds the receptor"}) + "\n" for i in range(4)))
    (suite / "test.jsonl").write_text("{not json\n")
    _lm_task(suite, "dom", "domain", dev, suite / "test.jsonl")
    report = bench(model="tiny-llama", suite=str(suite), split="dev", out=str(tmp_path / "b"), bootstrap=50)
    task = report["tasks"][0]
    assert task["files"] == {"dev": str(dev)} and "not test" in " ".join(task["notes"])
    saved = json.loads((tmp_path / "b" / "report.json").read_text())
    assert saved["config"]["split"] == "dev"
