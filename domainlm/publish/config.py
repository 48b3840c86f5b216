"""The schema of ``domainlm publish``: every flag is a field here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from domainlm.config import at_least, opt

# Hub repo ids: "name" (the token owner's namespace) or "owner/name"; huggingface_hub's own validator
# is applied again at push time, this one only catches typos before any work is done.
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


@dataclass
class PublishConfig:
    run_dir: str = opt(help="run folder written by `domainlm adapt` (manifest.json and final/)")
    out: str = opt(help="folder to write the published model into (must be absent or empty, or pass --overwrite)")
    merge: bool = opt(True, "merge a LoRA adapter into its base, giving a standalone model; --no-merge exports "
                      "the adapter alone (loading it then needs peft and the base model)")
    dtype: Literal["float32", "bfloat16", "float16"] = opt(
        "float32", "dtype of the exported weights; float32 reproduces the run exactly, bfloat16 halves the size "
        "(verified with a looser tolerance)")
    bench: str | None = opt(None, "bench report folder (report.json, comparison.png) whose results go into the card")
    model_name: str | None = opt(None, "model name in the card title and model-index (default: the --push repo "
                                 "name, else the --out folder name)")
    license: str | None = opt(None, "license id for the card, e.g. apache-2.0 (default: inherited from the base "
                              "model when it is known)")
    overwrite: bool = opt(False, "replace a non-empty --out folder")
    push: str | None = opt(None, "Hugging Face Hub repo id (owner/name) to upload the verified folder to; needs a "
                           "token (HF_TOKEN, or `hf auth login`)")
    dry_run: bool = opt(False, "with --push: list exactly which files would be uploaded, and where, and upload "
                        "nothing")
    private: bool = opt(True, "create the Hub repo as private, so the card can be checked before anyone sees it")
    tolerance: float | None = opt(None, "largest allowed |logit difference| as a fraction of max(1, max |logit|); "
                                  "default by dtype: 1e-4 float32, 2e-2 float16, 6e-2 bfloat16")
    verify_timeout: int = opt(900, "seconds the fresh-process verification may take")
    gguf: list[str] = opt(factory=list, help="also write OUT/<name>-<TYPE>.gguf for llama.cpp and Ollama, each verified "
                          "and with a Modelfile: f16, bf16, q8_0 (a list: --gguf f16,q8_0); needs "
                          "pip install 'domainlm[gguf]'")

    def problems(self) -> list[str]:
        out = at_least(self, verify_timeout=10)
        if self.dry_run and not self.push:
            out.append("'dry_run' lists what --push would upload: add --push REPO_ID, or drop --dry-run")
        if self.push is not None and not _REPO_ID.match(self.push):
            out.append(f"'push': {self.push!r} is not a Hub repo id; expected owner/name (letters, digits, '-', "
                       "'_', '.')")
        if self.tolerance is not None and not 0 < self.tolerance < 1:
            out.append(f"'tolerance' must be between 0 and 1, got {self.tolerance}")
        from domainlm.publish.gguf import parse_types

        out += parse_types(self.gguf)[1]
        return out
