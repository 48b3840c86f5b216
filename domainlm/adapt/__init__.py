"""``domainlm adapt``: continued pretraining of causal, masked and protein language models."""

from domainlm.adapt.config import AdaptConfig


def adapt(config=None, **overrides):
    """Continue pretraining a base model on a prepared domain corpus.

    Writes a run folder with checkpoints, a metrics log, loss/perplexity curves, the final model and a
    manifest (config, corpus hash, versions, FLOPs, wall time, final metrics). See AdaptConfig for options.
    """
    from domainlm.adapt.run import run

    return run(config, **overrides)


__all__ = ["AdaptConfig", "adapt"]
