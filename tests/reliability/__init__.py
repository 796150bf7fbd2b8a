"""Helpers of the reliability suites (fault matrix, outages, races, the sync model, hostile inputs, soak).

Nothing here is collected as a test: the modules are imported by ``tests/integration/test_*`` and
``tests/soak``. docs/reliability.md says what each suite proves and how to reproduce its figures.
"""
