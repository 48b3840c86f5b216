"""``domainlm quickstart``: the whole job end to end on a shipped sample (see :mod:`domainlm.quickstart.run`)."""

from domainlm.quickstart.run import QuickstartConfig, quickstart

__all__ = ["QuickstartConfig", "quickstart"]
