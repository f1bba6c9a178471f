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


def pytest_runtest_makereport(item, call):
    # Failures only: a skip is an exception too, and needs no seed to reproduce.
    if (call.when == "call" and call.excinfo is not None
            and not call.excinfo.errisinstance(pytest.skip.Exception)):
        for k, v in item.user_properties:
            if k == "seed":
                print(f"\n[ternary_ops] reproduce with TERNARY_OPS_TEST_SEED={v}")

