"""``domainlm vocab extend``: add frequent domain words to a base tokenizer and initialise their embeddings."""

from __future__ import annotations

from typing import Any

from domainlm.config import as_config
from domainlm.vocab.config import ExtendConfig


def extend(config: ExtendConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Add frequent domain words to a base tokenizer and initialise their embeddings.

    Trains a domain tokenizer on the corpus (Hugging Face tokenizers), adds the N whole words that the
    base tokenizer fragments most (ranked by tokens saved), initialises each new input embedding (and
    output embedding when untied) as the mean of the embeddings of the pieces it replaces, and saves a
    model + tokenizer folder that `domainlm adapt --model OUT` continues from (full training, or LoRA with
    --train-embeddings). Reports pieces per word on held-out domain text and the token count of the corpus
    before and after, and writes them into OUT/manifest.json. Returns the manifest plus ``out``.

    Raises:
        ConfigError: bad options, an output folder in the way, a protein model, a tokenizer that cannot be
            extended safely, or fewer qualifying words than asked for.
        DataError: a corpus without usable text.
    """
    from domainlm.vocab.run import run

    return run(as_config(ExtendConfig, config, overrides))


__all__ = ["ExtendConfig", "extend"]
