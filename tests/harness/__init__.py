"""The reliability harness: trials that kill, starve, fuzz and feed hostile files to ``domainlm`` commands.

Run small by tests/test_reliability_*.py and at full size by ``experiments/reliability.py``, which writes
``experiments/RELIABILITY.md`` from the results, so the report and the tests check one implementation.

- :mod:`harness.procs`: a command in a child process (forked from a warm interpreter, or exec'd), and helpers
  that compare runs and read what the commands printed;
- :mod:`harness.faults`: SIGKILLed ``adapt`` / ``corpus prepare`` runs resumed, full disks;
- :mod:`harness.fixtures` and :mod:`harness.fuzz`: hand-written valid inputs and their fuzzed mutations;
- :mod:`harness.untrusted`: untrusted model folders, hostile files, secrets;
- :mod:`harness.report`: the Markdown report.
"""
