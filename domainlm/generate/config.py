"""The options of ``domainlm generate``."""

from __future__ import annotations

from dataclasses import dataclass

from domainlm.config import at_least, opt


@dataclass
class GenerateConfig:
    model: str = opt(help="causal model: published folder, run folder, packaged name (smollm2), tiny-llama or a "
                     "Hub id")
    prompt: str = opt(help="text to continue")
    max_new_tokens: int = opt(64, "tokens to generate after the prompt")
    temperature: float = opt(0.8, "sampling temperature; 0 picks the most likely token every step (greedy)")
    top_p: float = opt(0.95, "nucleus sampling: sample from the smallest set of tokens whose probability reaches "
                       "this (1 disables)")
    seed: int = opt(0, "random seed; the same seed is used for --compare, so both models draw the same noise")
    compare: str | None = opt(None, "a second model (usually the base) whose continuation of the same prompt is "
                              "printed after the first")
    allow_pickle: bool = opt(False, "allow loading pickle (.bin) weights; pickle can execute code")
    trust_remote_code: bool = opt(False, "allow model code from the model folder to run")

    def problems(self) -> list[str]:
        out = at_least(self, max_new_tokens=1)
        if self.temperature < 0:
            out.append(f"'temperature' must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            out.append(f"'top_p' must be in (0, 1], got {self.top_p}")
        if not self.prompt:
            out.append("'prompt' is empty: give the text to continue")
        return out
