"""bench task files: every shipped YAML loads and validates; schema problems are reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainlm.errors import ConfigError
from domainlm.tasks.builtin import FORMATS
from domainlm.tasks.data import load_data
from domainlm.tasks.suites import iter_shipped_tasks, load_suite, load_task, parse_overrides
from domainlm.validate import ValidateConfig, validate

SHIPPED = sorted(iter_shipped_tasks())


def test_every_suite_is_shipped_with_a_readme():
    suites = {p.parent.name for p in SHIPPED}
    assert suites == {"biomed", "materials", "protein", "general", "blurb", "matsci", "protein-fitness"}
    for suite in suites:
        assert (SHIPPED[0].parent.parent / suite / "README.md").is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_task_loads_validates_and_reads(path: Path, capsys):
    spec = load_task(path)
    assert spec.version >= 1 and spec.task_name == path.stem
    assert validate(ValidateConfig(path=str(path))) == "task"
    assert "is a valid task file" in capsys.readouterr().out
    if all((spec.folder / f).exists() for f in spec.files.values()):
        data = load_data(spec)  # the shipped data passes every check
        assert data.test
        if spec.supervised:
            assert data.train and data.labels is None or len(data.labels) >= 1


def test_task_problems_reported_together_with_did_you_mean(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 0\nformat: conl\nmetric: entity_f2\nhead: token\nmode: zeroshot\nlabel: [x]\n"
                   "files: {test: t.tsv, validation: v.tsv}\n")
    with pytest.raises(ConfigError) as err:
        load_task(bad)
    text = str(err.value)
    assert "unknown key 'label' (did you mean 'labels'?)" in text
    assert "unknown task format 'conl' (did you mean 'conll'?)" in text
    assert "unknown metric 'entity_f2' (did you mean 'entity_f1'?)" in text
    assert "'version' must be 1 or more" in text
    assert "unknown splits ['validation']" in text
    assert "'mode: zeroshot' scores answer choices, so it needs head: sequence" in text


def test_impossible_combinations(tmp_path):
    bad = tmp_path / "combo.yaml"
    bad.write_text("version: 1\nformat: pdb\nhead: regression\nmetric: entity_f1\nmode: perplexity\n"
                   "files: {test: x}\n")
    with pytest.raises(ConfigError) as err:
        load_task(bad)
    text = str(err.value)
    assert "format 'pdb' cannot feed head 'regression'" in text
    assert "metric 'entity_f1' does not apply to head 'regression'; use one of: pearson, spearman" in text
    assert "'mode: perplexity' needs head: lm" in text


def test_format_registry_rejects_duplicates_and_suggests():
    with pytest.raises(ValueError, match="already registered"):
        FORMATS.register("conll", heads=("token",))(lambda p, s, split: [])
    with pytest.raises(ConfigError, match=r"did you mean 'pubtator'\?"):
        FORMATS.get("pubtater")


def test_overrides_parse_files_fields_and_at_files(tmp_path):
    f = tmp_path / "real.overrides"
    f.write_text("# comment\nner.test=ncbi/test.tsv  # trailing\nner.dev=\nner.labels=Disease\n")
    out = parse_overrides([f"@{f}", "relation.labels=A,B", "relation.negative_label=B"])
    assert out["ner"] == {"files": {"test": "ncbi/test.tsv", "dev": ""}, "labels": "Disease"}
    assert out["relation"] == {"labels": "A,B", "negative_label": "B"}  # commas stay inside the value
    with pytest.raises(ConfigError, match="'B' is not TASK.KEY=VALUE"):  # a stray word is not glued on
        parse_overrides(["relation.labels=A", "B"])
    with pytest.raises(ConfigError, match=r"unknown task key 'lables' \(did you mean 'labels'\?\)"):
        parse_overrides(["ner.lables=x"])
    with pytest.raises(ConfigError, match="is not TASK.KEY=VALUE"):
        parse_overrides(["ner=x"])


def test_suite_overrides_and_subsets():
    over = parse_overrides(["ner.dev=", "ner.labels=Disease,Chemical", "ner.probe_c=0.5"])
    specs = load_suite("biomed", ["ner", "relation"], over)
    assert [s.task_name for s in specs] == ["ner", "relation"]
    ner = specs[0]
    assert "dev" not in ner.files and ner.labels == ["Disease", "Chemical"] and ner.probe_c == 0.5
    with pytest.raises(ConfigError) as err:
        load_suite("biomed", ["nerr"], parse_overrides(["relaton.labels=x"]))
    text = str(err.value)
    assert "--tasks names 'nerr'" in text and "did you mean 'ner'" in text
    assert "override names task 'relaton'" in text and "did you mean 'relation'" in text
    with pytest.raises(ConfigError, match=r"did you mean 'biomed'\?"):
        load_suite("biomd")


def _biomed_generator():
    import importlib.util

    path = SHIPPED[0].parent.parent / "biomed" / "data" / "generate.py"
    spec = importlib.util.spec_from_file_location("biomed_generate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_biomed_samples_are_what_the_generator_writes(tmp_path, monkeypatch):
    """relation, doccls and pubmedqa come from benchmarks/biomed/data/generate.py, byte for byte."""
    gen = _biomed_generator()
    monkeypatch.setattr("sys.argv", ["generate.py", "--out", str(tmp_path), "--harness-out", str(tmp_path / "harness")])
    gen.main()
    shipped = SHIPPED[0].parent.parent / "biomed" / "data"
    for rel in ("relation/train.jsonl", "relation/test.jsonl", "doccls/train.jsonl", "doccls/test.jsonl",
                "pubmedqa/train.json", "pubmedqa/test.json"):
        assert (tmp_path / rel).read_bytes() == (shipped / rel).read_bytes(), f"{rel} differs from the generator"
    for split in ("train", "test"):  # the harness task pubmedqa_local holds the same items
        name = f"pubmedqa_local_{split}.jsonl"
        assert (tmp_path / "harness" / name).read_bytes() == (shipped.parent.parent / "harness" / "data" / name
                                                             ).read_bytes(), f"{name} differs from the generator"


def test_biomed_samples_shift_the_deciding_words_between_splits():
    """The words that decide a label in train never decide it in test (the lexical shift the samples rely on)."""
    import re

    gen = _biomed_generator()

    def words(templates):
        return {w for t in templates for w in re.findall(r"[a-z][a-z-]{3,}", re.sub(r"\{\w+\}", " ", t.lower()))}

    for table in (gen.RELATION, gen.HALLMARKS, gen.RESULTS):
        train = {label: words(v["train"]) for label, v in table.items()}
        test = {label: words(v["test"]) for label, v in table.items()}
        for label in table:
            # a word specific to this label in train (absent from other labels' train templates) ...
            specific = train[label] - set().union(*(train[o] for o in table if o != label))
            # ... must not show up in the same label's test templates
            assert not specific & test[label], (label, sorted(specific & test[label]))


def test_every_builtin_format_and_metric_resolves():
    """The built-ins are registered by import path (so the schema never imports a reader): each path must load."""
    from domainlm.tasks.builtin import METRICS

    for registry in (FORMATS, METRICS):
        for name in registry.names():
            entry = registry.get(name)
            assert callable(entry.fn), f"{registry.kind} '{name}' -> {entry.target}"
            assert entry.fn.__module__ == entry.module


def test_the_task_layer_sits_below_bench_and_corpora():
    """The schema loads without any reader, and no module of domainlm.tasks imports bench, corpora or a model
    library (issue 36: the task layer below both of its users, no circle)."""
    import subprocess
    import sys

    code = ("import sys; import domainlm.tasks.spec, domainlm.tasks.suites; "
            "bad = [m for m in sys.modules if m.startswith('domainlm.tasks.readers')]; assert not bad, bad; "
            "import importlib, pkgutil, domainlm.tasks as t; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(t.__path__, 'domainlm.tasks.')]; "
            "bad = [m for m in sys.modules if m.split('.')[:2] in (['domainlm', 'bench'], ['domainlm', 'corpora']) "
            "or m in ('torch', 'transformers')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
