"""``domainlm compute``."""
