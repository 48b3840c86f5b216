"""The shipped tasks that once saturated must tell a pretrained model from random weights.

Issue 16 asked that no shipped task saturate: MiniLM (pretrained) and the same network with random
weights must differ by more than the paired-delta CI on the shipped test items. The suite READMEs
record the measured pairs (MDE tables); this test re-measures them on the real bench path so a data
or reader change that makes a task easy again (e.g. test wording leaking into train) fails here.
Slow tier: five probe tasks on two MiniLM-sized models take a few minutes on two cores.
"""

from __future__ import annotations

import pytest

from domainlm.bench import bench

pytestmark = pytest.mark.slow

# (suite, task): the tasks that were rewritten because random weights matched pretrained ones
TASKS = [("biomed", "relation"), ("biomed", "doccls"), ("biomed", "pubmedqa"), ("materials", "glass"),
         ("protein", "property")]


@pytest.fixture(scope="module")
def random_minilm(tmp_path_factory):
    """MiniLM's config and tokenizer with freshly initialised weights (seed 0), as in the READMEs' MDE runs."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from domainlm.sources.resolution import resolve

    src = resolve("minilm")
    out = tmp_path_factory.mktemp("random-minilm")
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(src.path)).save_pretrained(out)
    AutoTokenizer.from_pretrained(src.path).save_pretrained(out)
    return out


@pytest.mark.parametrize("suite,task", TASKS, ids=[f"{s}/{t}" for s, t in TASKS])
def test_pretrained_beats_random_weights_by_more_than_the_ci(suite, task, random_minilm, tmp_path):
    report = bench(model="minilm", baseline=str(random_minilm), suite=suite, tasks=[task], out=str(tmp_path / "b"),
                   bootstrap=1000, threads=1)
    (t,) = report["tasks"]
    lo, hi = t["delta_ci"]
    assert t["model"]["score"] > t["baseline"]["score"]
    # the paired 95% interval of (pretrained - random) lies above zero: the task separates the two
    assert lo > 0, f"{suite}/{task}: pretrained {t['model']['score']:.3f} vs random {t['baseline']['score']:.3f}, " \
                   f"delta CI [{lo:+.3f}, {hi:+.3f}] includes 0: the task no longer discriminates"
