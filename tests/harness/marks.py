"""pytest marks that several test modules share."""

from __future__ import annotations

import os

import pytest

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the commands (POSIX only)")
