import os
import random

import pytest
import torch

import ternary_ops as tops

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ODD_DIMS = [1, 3, 5, 17, 63, 65, 257, 1000]


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """A fresh seed per test (printed on failure), so each run sees new data."""
    seed = int(os.environ.get("TERNARY_OPS_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None:
        for k, v in item.user_properties:
            if k == "seed":
                print(f"\n[ternary_ops] reproduce with TERNARY_OPS_TEST_SEED={v}")


def random_codes(n, k, device="cpu"):
    return torch.randint(-1, 2, (n, k), dtype=torch.int8, device=device)


def random_scale(n, per_channel):
    return (torch.rand(n if per_channel else ()) + 0.05).float()


def make_weight(codes, format):
    return tops.pack_i2(codes) if format == "i2" else codes


def run_op(format, x, codes, scale, bias, act):
    """Calls the native op for ``format`` on unpacked ``codes``."""
    w = make_weight(codes, format)
    if format == "i2":
        return torch.ops.ternary.linear_i2(x, w, scale, codes.shape[0], bias, act)
    return torch.ops.ternary.linear_i8(x, w, scale, bias, act)


def tolerance(dtype):
    return {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2),
            torch.float16: (2e-3, 2e-3)}[dtype]
