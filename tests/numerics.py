"""Comparing float results so that a test gives the same verdict on every machine.

Float32 sums come out in another order on other CPUs (AVX-512, AVX2 or plain kernels, another BLAS),
so results differ in their last bits. A comparison therefore allows round-off relative to the size
of the numbers involved, never one machine's exact digits.
"""
import torch

# ~80 float32 ulps of the largest magnitude: far above the round-off of the short computations the
# tests compare, far below any error a wrong formula makes.
FLOAT32_ROUNDOFF = 1e-5


def assert_close(actual, expected, rel=FLOAT32_ROUNDOFF):
    """|actual - expected| <= rel * max|expected| everywhere.

    The scale is the computation's, not each element's: an element near zero carries the round-off
    of the larger terms it was computed from.
    """
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=0, atol=rel * scale)
