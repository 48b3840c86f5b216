"""``domainlm validate``."""
