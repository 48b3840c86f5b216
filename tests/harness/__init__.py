"""What several test modules share, and what experiment scripts reuse from the tests (tests import no test file and
no experiment script; scripts import ``tests.harness`` with the checkout on sys.path).

The reliability harness: trials that kill, starve, fuzz and feed hostile files to ``domainlm`` commands. Run small
by tests/test_reliability_*.py and at full size by ``experiments/reliability.py``, which writes
``experiments/RELIABILITY.md`` from the results, so the report and the tests check one implementation.

- :mod:`harness.procs`: a command in a child process (forked from a warm interpreter, or exec'd), and helpers
  that compare runs and read what the commands printed;
- :mod:`harness.faults`: SIGKILLed ``adapt`` / ``corpus prepare`` runs resumed, full disks;
- :mod:`harness.fixtures` and :mod:`harness.fuzz`: hand-written valid inputs and their fuzzed mutations;
- :mod:`harness.untrusted`: untrusted model folders, hostile files, secrets;
- :mod:`harness.report`: the Markdown report.

Shared by other tests:

- :mod:`harness.runs`: real tiny run folders (prepare + adapt), built once a session (publish, merge, generate, GGUF);
- :mod:`harness.server`: a local HTTP server for the download tests (corpus download, bench download);
- :mod:`harness.architectures`: the architecture matrix's rows (tests/test_architectures.py, experiments/architectures.py);
- :mod:`harness.marks`: shared pytest marks.
"""
