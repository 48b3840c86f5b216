"""``domainlm vocab extend``: add frequent domain words to a base tokenizer and initialise their embeddings."""

from domainlm.vocab.config import ExtendConfig


def extend(config=None, **overrides):
    """Add frequent domain words to a base tokenizer and initialise their embeddings.

    Trains a domain tokenizer on the corpus (Hugging Face tokenizers), adds the N whole words that the
    base tokenizer fragments most (ranked by tokens saved), initialises each new input embedding (and
    output embedding when untied) as the mean of the embeddings of the pieces it replaces, and saves a
    model + tokenizer folder that `domainlm adapt --model OUT` continues from (full training, or LoRA with
    --train-embeddings). Reports pieces per word on held-out domain text and the token count of the corpus
    before and after, and writes them into OUT/manifest.json.
    """
    from domainlm.vocab.run import extend as run

    return run(config, **overrides)


__all__ = ["ExtendConfig", "extend"]
