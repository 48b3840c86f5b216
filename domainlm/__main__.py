"""``python -m domainlm`` is the ``domainlm`` command."""

import sys

from domainlm.cli import main

sys.exit(main())
