"""adapt on a weighted mixture of corpora (issue 33): the stream's shares, schedule and max_epochs; the older
replay form's stream unchanged; validation naming the key; per-source held-out curves; exact resume after
SIGKILL with three sources and a schedule; the realised mixture in the manifest; compute's plan; trackers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from domainlm.adapt.config import AdaptConfig
from domainlm.adapt.data import MixtureExhausted, SequenceStream, StreamSource
from domainlm.config import build
from domainlm.errors import ConfigError

THREE = [StreamSource("a", 97, 0.5, salt=0), StreamSource("b", 41, 0.3, salt=1), StreamSource("c", 13, 0.2, salt=2)]


# ----------------------------------------------------------------------------------------------------
# the stream
# ----------------------------------------------------------------------------------------------------

class _OldStream:
    """SequenceStream as it was before issue 33 (copied from git history): the replay form must keep its stream."""

    def __init__(self, n_domain, n_replay, seed, replay_fraction):
        self.n_domain, self.n_replay = n_domain, n_replay
        self.seed, self.fraction = seed, (replay_fraction if n_replay > 0 else 0.0)
        self.next_index = self.domain_used = self.replay_used = 0

    def _row(self, salt, used, n):
        return int(np.random.default_rng([self.seed, salt, used // n]).permutation(n)[used % n])

    def take(self, count):
        from domainlm.adapt.data import replay_draws

        out = []
        for is_replay in replay_draws(self.next_index, self.next_index + count, self.seed, self.fraction):
            if is_replay:
                out.append(("replay", self._row(1, self.replay_used, self.n_replay)))
                self.replay_used += 1
            else:
                out.append(("domain", self._row(0, self.domain_used, self.n_domain)))
                self.domain_used += 1
        self.next_index += count
        return out


@pytest.mark.parametrize("n_domain,n_replay,seed,fraction", [(50, 30, 1, 0.2), (7, 3, 0, 0.05), (64, 9, 5, 0.5),
                                                            (20, 0, 2, 0.3), (33, 11, 3, 0.0), (5, 40, 9, 0.93)])
def test_replay_form_gives_the_stream_of_earlier_versions(n_domain, n_replay, seed, fraction):
    old, new = _OldStream(n_domain, n_replay, seed, fraction), SequenceStream.replay(n_domain, n_replay, seed, fraction)
    for count in (1, 7, 64, 300, 5):  # uneven takes, several epochs of the small sources
        assert new.take(count) == old.take(count)
    assert new.state.used.get("replay", 0) == old.replay_used and new.state.used["domain"] == old.domain_used


def test_realised_token_shares_are_within_one_percent_of_the_weights():
    stream = SequenceStream(THREE, seed=4)
    items = stream.take(10_000)
    shares = {k: v / len(items) for k, v in Counter(s for s, _ in items).items()}
    for src in THREE:
        assert abs(shares[src.name] - src.weight) < 0.01 * src.weight, shares  # relative 1%, not 1 point
    # every epoch of a source visits each of its blocks once
    a_rows = [r for s, r in items if s == "a"]
    assert sorted(a_rows[:97]) == list(range(97))
    # within a batch of 10 the shares are close too (the draws fill [0, 1) evenly)
    first = Counter(s for s, _ in items[:10])
    assert (first["a"], first["b"], first["c"]) in {(5, 3, 2), (4, 3, 3), (5, 2, 3), (6, 3, 1), (5, 4, 1),
                                                    (4, 4, 2), (6, 2, 2)}


def test_schedule_shares_follow_the_schedule_at_given_steps():
    # steps of 8 sequences: weights go from (0.2, 0.2, 0.6) at step 0 to (0.6, 0.3, 0.1) at step 1000, then hold
    start, end = [0.2, 0.2, 0.6], [0.6, 0.3, 0.1]
    stream = SequenceStream(THREE, seed=1, schedule=[(0, start), (8000, end)])
    items = stream.take(12_000)
    for step, expect in ((0, start), (500, [0.4, 0.25, 0.35]), (1000, end), (1400, end)):
        window = items[max(0, step * 8 - 400):step * 8 + 400]  # 100 steps around it (the weights are ~linear)
        got = Counter(s for s, _ in window)
        for name, w in zip("abc", expect, strict=True):
            assert abs(got[name] / len(window) - w) < 0.02, (step, got)
    assert np.allclose(stream.weights_at(np.array([4000]))[0], [0.4, 0.25, 0.35])


def test_max_epochs_exhaustion_renormalises_the_other_sources():
    capped = [StreamSource("a", 97, 0.5), StreamSource("b", 41, 0.3, salt=1),
              StreamSource("c", 13, 0.2, max_epochs=2, salt=2)]
    stream = SequenceStream(capped, seed=0)
    items = stream.take(3000)
    c_at = [i for i, (s, _) in enumerate(items) if s == "c"]
    assert len(c_at) == 26  # two epochs of 13 blocks, then never again
    assert sorted(r for s, r in items if s == "c") == sorted(list(range(13)) * 2)
    after = Counter(s for s, _ in items[c_at[-1] + 1:])
    assert abs(after["a"] / sum(after.values()) - 0.5 / 0.8) < 0.01  # a and b share c's weight 5:3
    # resumable at any point, also across the exhaustion
    again = SequenceStream(capped, seed=0)
    head = again.take(c_at[-1] - 3)
    resumed = SequenceStream(capped, seed=0)
    resumed.load_state_dict(json.loads(json.dumps(again.state_dict())))
    assert head + resumed.take(3000 - len(head)) == items
    # when every source with weight is capped, the stream says so (and the run refuses before training)
    with pytest.raises(MixtureExhausted, match="max_epochs"):
        SequenceStream([StreamSource("a", 5, 1.0, max_epochs=1)], seed=0).take(6)


def test_old_checkpoints_stream_state_loads():
    ref = _OldStream(50, 30, 1, 0.2)
    ref.take(40)
    stream = SequenceStream.replay(50, 30, seed=1, replay_fraction=0.2)  # a checkpoint written before issue 33:
    stream.load_state_dict({"next_index": 40, "domain_used": ref.domain_used, "replay_used": ref.replay_used})
    assert ref.replay_used > 0 and stream.take(50) == ref.take(50)


# ----------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------

def _problems(**values) -> str:
    with pytest.raises(ConfigError) as exc:
        build(AdaptConfig, values)
    return str(exc.value)


def test_bad_weights_and_unknown_sources_fail_validation_naming_the_key(tmp_path):
    msg = _problems(sources=[{"corpus": "pubmed-sample", "weight": 0}, {"corpus": "b", "weight": -0.5},
                             {"corpus": "c"}])
    assert "'sources[0].weight' must be positive, got 0" in msg
    assert "'sources[1].weight' must be positive, got -0.5" in msg
    assert "'sources[2].weight' is required" in msg
    msg = _problems(sources=[{"corpus": "x", "weight": 1, "name": "pubmed"}, {"corpus": "y", "weight": 1}],
                    mixture_schedule=[{"step": 10, "weights": {"pubmd": 1, "y": 1}}])
    assert "'mixture_schedule[0].weights': unknown source 'pubmd' (did you mean 'pubmed'?)" in msg
    assert "'mixture_schedule[0].weights' is missing pubmed" in msg
    assert "'sources[0]': unknown key 'wieght'" in _problems(sources=[{"corpus": "x", "wieght": 1}])
    assert "'sources[1].name'" in _problems(sources=[{"corpus": "a/x", "weight": 1}, {"corpus": "b/x", "weight": 1}])
    assert "replaces 'replay_corpus'" in _problems(sources=["a=1"], replay_corpus="general-english-sample")
    assert "'report_to'" in _problems(report_to=["tensorbord"])
    # a source that names neither a folder nor a card fails before any model is loaded
    from domainlm.adapt import adapt

    with pytest.raises(ConfigError, match=r"'sources\[1\].corpus': no prepared corpus folder or corpus card named "
                                          r"'pubmed-sampel' \(did you mean 'pubmed-sample'\?\)"):
        adapt(model="no-such-model", sources=["general-english-sample=0.5", "pubmed-sampel=0.5"],
              out=str(tmp_path / "r"))


def test_flag_form_and_shipped_recipe_load():
    cfg = build(AdaptConfig, {"sources": ["pubmed-sample=0.7", "general-english-sample=0.3"]}, from_string={"sources"})
    assert [(s.corpus, s.weight) for s in cfg.sources] == [("pubmed-sample", 0.7), ("general-english-sample", 0.3)]
    from domainlm.config import load

    recipe = load(AdaptConfig, "mixture-three-sources")
    assert [s.label for s in recipe.sources] == ["pubmed", "materials", "general"]
    assert recipe.mixture_schedule[1].step == 24


# ----------------------------------------------------------------------------------------------------
# runs on tiny corpora
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def three_corpora(llama_corpus, tmp_path_factory) -> dict[str, Path]:
    """PubMed, materials and general samples prepared for tiny-llama in 64-token blocks (one tokenizer)."""
    from domainlm.corpora.run import prepare_card

    root = tmp_path_factory.mktemp("mixture")
    out = {"pubmed": llama_corpus}
    for name, card in (("materials", "arxiv-materials-sample"), ("general", "general-english-sample")):
        prepare_card(card, "tiny-llama", root / name, block_size=64)
        out[name] = root / name
    return out


def _recipe(corpora: dict[str, Path], path: Path, **extra) -> Path:
    import yaml

    values = {"model": "tiny-llama", "lr": 3e-3, "batch_size": 4, "seed": 0, "log_every": 1, "eval_sequences": 4,
              "sources": [{"corpus": str(corpora["pubmed"]), "name": "pubmed", "weight": 0.5},
                          {"corpus": str(corpora["materials"]), "name": "materials", "weight": 0.3},
                          {"corpus": str(corpora["general"]), "name": "general", "weight": 0.2, "max_epochs": 1}],
              "mixture_schedule": [{"step": 2, "weights": {"pubmed": 0.2, "materials": 0.2, "general": 0.6}},
                                   {"step": 8, "weights": {"pubmed": 0.6, "materials": 0.3, "general": 0.1}}],
              **extra}
    path.write_text(yaml.safe_dump(values))
    return path


def _cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domainlm", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "DOMAINLM_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})})


def test_three_source_run_logs_per_source_curves_and_the_realised_mixture(three_corpora, tmp_path):
    from domainlm.adapt import adapt

    recipe = _recipe(three_corpora, tmp_path / "mix.yaml", max_steps=10, save_every=0, eval_every=5)
    adapt(str(recipe), out=str(tmp_path / "ref"))
    # per-source held-out curves in metrics.jsonl, at the start, step 5 and the end
    rows = [json.loads(x) for x in (tmp_path / "ref/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [0, 5, 10]
    for r in evals:
        assert set(r["sources"]) == {"pubmed", "materials", "general"}
        assert all(v["ppl"] > 1 and v["loss"] > 0 for v in r["sources"].values())
        assert r["domain_loss"] == r["sources"]["pubmed"]["loss"]
    assert evals[-1]["sources"]["pubmed"]["loss"] < evals[0]["sources"]["pubmed"]["loss"]

    # the realised mixture: 40 sequences; the stream replayed here gives the same counts
    man = json.loads((tmp_path / "ref/manifest.json").read_text())
    drawn = man["stream"]["sources"]
    assert sum(d["sequences"] for d in drawn.values()) == 40
    assert sum(d["tokens"] for d in drawn.values()) == man["tokens_trained"] == 40 * 64
    general_blocks = next(s["training_blocks"] for s in man["corpus"]["sources"] if s["name"] == "general")
    assert drawn["general"]["epochs"] == pytest.approx(drawn["general"]["sequences"] / general_blocks)
    assert drawn["general"]["sequences"] <= general_blocks  # max_epochs: 1
    assert (tmp_path / "ref/curves.png").stat().st_size > 10_000


@pytest.mark.slow  # three CLI runs (~1-4 min on a shared 2-core machine)
def test_three_sources_with_a_schedule_resume_bitwise_after_sigkill(three_corpora, tmp_path):
    recipe = _recipe(three_corpora, tmp_path / "mix.yaml", max_steps=10, save_every=4, eval_every=5)
    ref = _cli(["adapt", str(recipe), "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _cli(["adapt", str(recipe), "--out", str(tmp_path / "cut")], env={"DOMAINLM_FAULT": "step:6"})
    assert killed.returncode == -9
    resumed = _cli(["adapt", str(recipe), "--out", str(tmp_path / "cut"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "ref/final/model.safetensors"))
    b = load_file(str(tmp_path / "cut/final/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(x).get("loss") for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("ref", "cut")]
    assert losses[0] == losses[1]
    drawn = [json.loads((tmp_path / run / "manifest.json").read_text())["stream"]["sources"] for run in ("ref", "cut")]
    assert drawn[0] == drawn[1]


def test_loss_mask_source_requires_the_column_and_masks_labels(three_corpora, tmp_path):
    from datasets import Dataset

    from domainlm.adapt.batches import BatchBuilder
    from domainlm.adapt.data import SequenceStream, StreamSource
    from domainlm.lm_loss import IGNORE

    ids = np.arange(2 * 8).reshape(2, 8) + 10
    chat = Dataset.from_dict({"input_ids": ids.tolist(), "doc_ids": [[0] * 8, [1] * 8],
                              "loss_mask": [[0, 0, 0, 1, 1, 1, 0, 0], [1] * 8]}).with_format("torch")
    plain = Dataset.from_dict({"input_ids": (ids + 100).tolist(), "doc_ids": [[0] * 8] * 2}).with_format("torch")
    builder = BatchBuilder({"chat": chat, "plain": plain}, None, seed=0, document_mask=True)
    got_ids, docs, mask = builder.rows([("plain", 1), ("chat", 0), ("chat", 1)])
    assert torch.equal(got_ids, torch.tensor([(ids[1] + 100).tolist(), ids[0].tolist(), ids[1].tolist()]))
    assert mask.tolist() == [[1] * 8, [0, 0, 0, 1, 1, 1, 0, 0], [1] * 8]  # every column kept; plain counts all
    _, labels, _ = builder.labelled(got_ids, docs, [0, 1, 2], loss_mask=mask)
    assert labels[1].tolist() == [IGNORE, IGNORE, 13, 14, 15, IGNORE, IGNORE, IGNORE]  # targets at mask-1 tokens
    assert labels[0].tolist()[:-1] == (ids[1] + 101).tolist()[:-1]
    stream = SequenceStream([StreamSource("chat", 2, 0.5), StreamSource("plain", 2, 0.5, salt=1)], seed=0)
    batch = builder.step(stream, 0, rank=0, world=1, batch_size=4, grad_accum=1)
    assert len(batch.micro) == 1 and batch.state_after.next_index == 4

    from domainlm.adapt import adapt

    with pytest.raises(ConfigError, match=r"'sources\[0\].loss_mask' is true but .* has no loss_mask column"):
        adapt(model="tiny-llama", sources=[{"corpus": str(three_corpora["general"]), "weight": 1,
                                            "loss_mask": True}], out=str(tmp_path / "r"), max_steps=1)


def test_compute_plans_tokens_and_epochs_per_source_and_warns_on_repeats(three_corpora, tmp_path, capsys, caplog):
    from domainlm.compute import compute

    recipe = _recipe(three_corpora, tmp_path / "mix.yaml", mixture_schedule=None,
                     sources=[{"corpus": str(three_corpora["pubmed"]), "name": "pubmed", "weight": 0.5},
                              {"corpus": str(three_corpora["general"]), "name": "general", "weight": 0.5}])
    blocks = {n: json.loads((three_corpora[n] / "manifest.json").read_text())["splits"]["train"]["blocks"]
              for n in ("pubmed", "general")}
    tokens = 64 * 2 * 5 * blocks["general"]  # general at half the budget: 5 epochs; PubMed far fewer
    out = compute(model="tiny-llama", tokens=tokens, probe_seconds=0, mixture=str(recipe))
    plan = out["mixture"]["sources"]
    assert plan["general"]["epochs"] == pytest.approx(5, abs=0.01)
    assert plan["pubmed"]["tokens"] + plan["general"]["tokens"] == tokens
    printed = capsys.readouterr().out
    assert "general" in printed and "5.00 epochs" in printed
    assert any("would repeat 5.0 times" in w for w in out["warnings"]) and "Muennighoff" in caplog.text
    assert not any("pubmed" in w for w in out["warnings"])


# ----------------------------------------------------------------------------------------------------
# experiment trackers: each writes its local files (offline)
# ----------------------------------------------------------------------------------------------------

RECORDS = [{"type": "train", "step": 1, "loss": 3.5, "lr": 1e-3, "tokens": 256},
           {"type": "eval", "step": 1, "domain_loss": 3.2, "sources": {"pubmed": {"loss": 3.2, "ppl": 24.5},
                                                                      "general": {"loss": 3.9, "ppl": 49.4}}}]


def _log_to(tracker: str, tmp_path: Path) -> Path:
    import importlib.util

    from domainlm.adapt.curves import MetricsLog
    from domainlm.adapt.tracking import EXTRAS

    module, extra = EXTRAS[tracker]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install 'domainlm[{extra}]')")
    run = tmp_path / "run"
    run.mkdir()
    log = MetricsLog(run / "metrics.jsonl", None, True, [tracker], {"model": "tiny-llama", "lr": 1e-3})
    for rec in RECORDS:
        log.write(rec)
    log.manifest({"kind": "run", "tokens_trained": 256, "stream": {"sources": {}}})
    log.close()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    return run


def test_tensorboard_writes_event_files(tmp_path):
    run = _log_to("tensorboard", tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("eval/pubmed/ppl")] == [pytest.approx(24.5)]
    assert "train/loss" in acc.Tags()["scalars"]


def test_wandb_writes_an_offline_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = _log_to("wandb", tmp_path)
    runs = list((run / "wandb").glob("offline-run-*"))
    (record_log,) = runs[0].glob("*.wandb")  # the offline run's record log (what `wandb sync` uploads)
    data = record_log.read_bytes()
    assert b"eval/general/ppl" in data and b"train/loss" in data and b"tokens_trained" in data


def test_mlflow_writes_a_local_file_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = _log_to("mlflow", tmp_path)
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("domainlm").experiment_id])
    assert found.data.metrics["eval.pubmed.ppl"] == pytest.approx(24.5)
    assert found.data.params["model"] == "tiny-llama"
    assert {a.path for a in client.list_artifacts(found.info.run_id)} >= {"config.json", "manifest.json"}


def test_trackio_writes_its_local_store(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    run = _log_to("trackio", tmp_path)
    assert any((run / "trackio").rglob("*")), "trackio wrote nothing under OUT/trackio"


def test_missing_tracker_is_refused_with_the_install_command(monkeypatch):
    import importlib.util

    from domainlm.adapt.tracking import missing_trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert missing_trackers(["tensorboard", "wandb"]) == [
        "'report_to[1]': wandb is not installed: pip install 'domainlm[wandb]' (or drop it)"]


def test_forgetting_monitor_warns_per_source():
    from domainlm.adapt.mixture import forgetting_warnings

    initial = {"sources": {"pubmed": {"ppl": 60.0}, "general": {"ppl": 40.0}, "materials": {"ppl": 50.0}}}
    final = {"sources": {"pubmed": {"ppl": 30.0}, "general": {"ppl": 48.0}, "materials": {"ppl": 54.0}}}
    warnings = forgetting_warnings(initial, final, threshold=0.10)
    assert len(warnings) == 1 and "source 'general' rose +20.0% (40.00 -> 48.00)" in warnings[0]
    assert final["sources"]["materials"]["ppl_rise"] == pytest.approx(0.08)  # recorded, under the threshold
