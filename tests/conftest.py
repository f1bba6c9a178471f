"""Fixtures for every test file; shared helper functions live in tests/helpers.py."""
import os
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """A fresh seed per test (printed on failure), so each run sees new data."""
    seed = int(os.environ.get("TERNARY_OPS_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Prints the seed of a failed test. Skipped and xfailed tests are not failures and print
    nothing."""
    report = (yield).get_result()
    if report.when == "call" and report.failed:
        for k, v in item.user_properties:
            if k == "seed":
                print(f"\n[ternary_ops] reproduce with TERNARY_OPS_TEST_SEED={v}")
