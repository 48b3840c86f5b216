"""``domainlm generate``."""
