"""``domainlm models``."""
