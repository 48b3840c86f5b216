"""Never delete what domainlm did not write, never train on the wrong ids (issue 28, section 2).

One rule (``artifacts.why_not_replace``) for every verb with ``--overwrite``: only a folder whose manifest says
domainlm wrote it is replaced; never the working directory, never a folder that holds the command's input.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from domainlm.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def runs(tmp_path_factory, llama_corpus) -> Path:
    """runs/x: a finished one-step full run of tiny-llama, under a folder that holds other runs too."""
    from domainlm.adapt import adapt

    root = tmp_path_factory.mktemp("never-delete") / "runs"
    adapt(model="tiny-llama", corpus=str(llama_corpus), out=str(root / "x"), max_steps=1, batch_size=2,
          eval_batches=1, eval_every=0, save_every=0, bf16="off")
    (root / "other-run").mkdir()
    (root / "other-run" / "notes.txt").write_text("another run's notes")
    return root


def _thesis(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("mine")
    return folder / "thesis.tex"


def test_the_rule(tmp_path, monkeypatch):
    from domainlm.artifacts import why_not_replace, write_manifest

    monkeypatch.chdir(tmp_path)
    assert why_not_replace(tmp_path / "absent", ("run",)) is None
    (tmp_path / "empty").mkdir()
    assert why_not_replace(tmp_path / "empty", ("run",)) is None
    _thesis(tmp_path / "d")
    assert "never deletes folders it did not write" in why_not_replace(tmp_path / "d", ("run",))
    write_manifest(tmp_path / "r", "run")
    assert why_not_replace(tmp_path / "r", ("run",)) is None
    assert "a 'run' folder" in why_not_replace(tmp_path / "r", ("published",))
    assert "working directory" in why_not_replace(Path("."), ("run",))
    assert "working directory" in why_not_replace(tmp_path.parent, ("run",))
    (tmp_path / "r" / "corpus").mkdir()
    assert "holds the input" in why_not_replace(tmp_path / "r", ("run",), inputs=(tmp_path / "r" / "corpus",))
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / ".work").mkdir()
    (tmp_path / "u" / ".work" / "config.json").write_text("{}")
    assert why_not_replace(tmp_path / "u", ("corpus",), markers=(".work/config.json",)) is None


def test_a_folder_kind_is_read_one_way(tmp_path, monkeypatch):
    """The rule, ``is_run_folder`` and bench's --out check read a folder's kind through ``artifacts.peek_manifest``
    (``read_manifest``, finished or not): an unfinished run is a run; a missing, corrupt or non-object manifest is
    no kind at all, never a crash."""
    from domainlm.artifacts import peek_manifest, why_not_replace, write_manifest
    from domainlm.bench.run import _check_out
    from domainlm.loading import is_run_folder

    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path / "unfinished", "run", complete=False)
    assert peek_manifest(tmp_path / "unfinished")["kind"] == "run" and is_run_folder(tmp_path / "unfinished")
    assert why_not_replace(tmp_path / "unfinished", ("run",)) is None
    assert peek_manifest(tmp_path / "absent") == {} and not is_run_folder(tmp_path / "absent")
    for name, text in (("corrupt", "{not json"), ("list", "[1, 2]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(text)
        assert peek_manifest(tmp_path / name) == {} and not is_run_folder(tmp_path / name)
        assert "not a folder domainlm wrote" in why_not_replace(tmp_path / name, ("run",))
        with pytest.raises(ConfigError, match="not a bench report folder"):
            _check_out(tmp_path / name)


def test_publish_overwrite_never_deletes_the_run_it_publishes(runs):
    from domainlm.publish import publish

    with pytest.raises(ConfigError, match="holds the input"):
        publish(run_dir=str(runs / "x"), out=str(runs), overwrite=True)
    assert (runs / "x" / "manifest.json").is_file() and (runs / "other-run" / "notes.txt").is_file()


def test_publish_overwrite_refuses_the_working_directory_and_foreign_folders(runs, tmp_path, monkeypatch):
    from domainlm.publish import publish

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="working directory"):
        publish(run_dir=str(runs / "x"), out=".", overwrite=True)
    thesis = _thesis(tmp_path / "d")
    with pytest.raises(ConfigError, match="never deletes folders it did not write") as err:
        publish(run_dir=str(runs / "x"), out="d", overwrite=True)
    assert "--overwrite" not in str(err.value)  # the advice is not to pass what would be refused anyway
    assert thesis.read_text() == "mine"


def test_adapt_overwrite_refuses_foreign_folders_and_its_own_input(runs, llama_corpus, tmp_path):
    from domainlm.adapt import adapt

    thesis = _thesis(tmp_path / "d")
    kw = dict(model="tiny-llama", max_steps=1, batch_size=2, eval_batches=1, eval_every=0, save_every=0)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="never deletes folders it did not write") as err:
            adapt(corpus=str(llama_corpus), out=str(tmp_path / "d"), overwrite=overwrite, **kw)
        assert "--overwrite" not in str(err.value)
    assert thesis.read_text() == "mine"
    # a run folder that holds the corpus it would train on
    run = tmp_path / "run"
    shutil.copytree(runs / "x", run)
    shutil.copytree(llama_corpus, run / "corpus")
    with pytest.raises(ConfigError, match="holds the input"):
        adapt(corpus=str(run / "corpus"), out=str(run), overwrite=True, **kw)
    assert (run / "corpus" / "manifest.json").is_file()


def test_prepare_refuses_foreign_folders_with_the_same_rule(tmp_path):
    from domainlm.corpora.run import prepare_card

    thesis = _thesis(tmp_path / "d")
    with pytest.raises(ConfigError, match="never deletes folders it did not write"):
        prepare_card("pubmed-sample", "tiny-llama", tmp_path / "d", block_size=64, overwrite=True)
    assert thesis.read_text() == "mine"


def test_adapt_refuses_a_tokenizer_with_the_same_size_but_other_ids(llama_corpus, tmp_path):
    """Two token ids swapped in a copy of the model's tokenizer.json: the vocabulary size is the same, the ids mean
    other text; the corpus manifest's tokenizer fingerprint tells them apart."""
    from domainlm.adapt import adapt
    from domainlm.sources.load import load_model, load_tokenizer
    from domainlm.sources.resolution import resolve

    src = resolve("tiny-llama")
    folder = tmp_path / "swapped"
    model, _ = load_model(src, "causal")
    model.save_pretrained(folder)
    load_tokenizer(src).save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = (t for t, i in vocab.items() if i in (100, 101))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="another tokenizer than the model's"):
        adapt(model=str(folder), corpus=str(llama_corpus), out=str(tmp_path / "run"), max_steps=1, batch_size=2)


def test_a_killed_writers_temporary_folder_is_cleaned_on_the_next_run(tmp_path):
    """A killed publish leaves .NAME.<owner>-<random>.tmp (the full weights); the next write of NAME removes it,
    but never the temporary folder of a writer that is still alive."""
    import subprocess
    import sys

    from domainlm.artifacts import _OWNER, atomic_dir

    final = tmp_path / "pub"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = _OWNER.rpartition("_")[0]
    stale = tmp_path / f".pub.{host}_{int(dead.stdout)}-abc123.tmp"
    live = tmp_path / f".pub.{host}_{os.getppid()}-def456.tmp"
    old_style = tmp_path / ".pub.k2j4h5.tmp"
    for d in (stale, live, old_style):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 10)
    os.utime(old_style, (0, 0))  # written by an older domainlm, long ago
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("new")
    assert not stale.exists() and not old_style.exists() and live.exists()
    assert (final / "a").read_text() == "new"


def test_full_disk_during_prepare_says_what_to_do(tmp_path, monkeypatch):
    """datatrove passes a task's OSError(ENOSPC) through; prepare turns it into one line saying what to do."""
    import errno

    from domainlm.corpora.run import prepare_card
    from domainlm.corpora.steps.pack import PackTask

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "c" / ".work"))

    monkeypatch.setattr(PackTask, "run", full)  # the per-task pack stage (issue 35)
    with pytest.raises(DataError) as err:
        prepare_card("pubmed-sample", "tiny-llama", tmp_path / "c", block_size=64, workers=1)
    message = str(err.value)
    assert "no space left on the device while preparing" in message and "run the same command again" in message
    assert "\n" not in message and "datatrove task" not in message
