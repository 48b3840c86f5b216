"""Test set-up: offline, caches inside a per-session temporary folder, tiny models built once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="domainlm-tests-"))
# Hub access is never attempted; HF, torch and domainlm caches live under the session folder. The
# domainlm cache (dequantised SmolLM2, built tiny models) may be shared across runs with
# DOMAINLM_TEST_CACHE to save ~30 s per session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HOME"] = str(_SESSION_ROOT / "hf")
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_ROOT / "hf" / "datasets")
os.environ["TORCH_HOME"] = str(_SESSION_ROOT / "torch")
os.environ["MPLBACKEND"] = "Agg"
os.environ["DOMAINLM_CACHE"] = os.environ.get("DOMAINLM_TEST_CACHE") or str(_SESSION_ROOT / "domainlm")

REPO = Path(__file__).resolve().parent.parent
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The read-only real-data samples beside the checkout; tests using them skip when absent."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not present on this machine")
    return REALDATA


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_ROOT


@pytest.fixture(scope="session")
def llama_corpus(tmp_path_factory) -> Path:
    """The shipped PubMed sample prepared for tiny-llama in 64-token blocks, shared by the adapt tests."""
    from domainlm.corpora.run import prepare_card

    out = tmp_path_factory.mktemp("corpus") / "pubmed-tiny-llama"
    prepare_card("pubmed-sample", "tiny-llama", out, block_size=64)
    return out


@pytest.fixture(params=[False, True], ids=["bf16-slow", "bf16-fast"])
def bf16_fast(request, monkeypatch) -> bool:
    """Runs a test under both answers to "is bf16 fast here?" (DOMAINLM_BF16_FAST), so the bf16 branches (frozen bf16
    base, autocast, QLoRA bf16 compute) run on an AVX2-only CPU too and the fp32 ones on a bf16 machine."""
    monkeypatch.setenv("DOMAINLM_BF16_FAST", "1" if request.param else "0")
    return request.param
