"""engine.vectorize on CUDA: vectorised local training equals the sequential CUDA loop to 1e-4 (fp32,
no TF32: the MLP's matmuls; the CNN's cuDNN convolutions may use TF32 and are only timed by the bench)."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False")]


def test_cuda_vectorised_equals_sequential():
    from fedsqueeze.bench.vectorize import compare

    r = compare("cuda", "mlp", clients=20, steps=10, repeats=1)
    assert r["max_dw"] < 1e-4, r


def test_cuda_vectorised_equals_cpu_sequential():
    """The same seeded model and data on both devices: CUDA vectorised vs the CPU sequential loop."""
    from fedsqueeze.bench.vectorize import sequential, setup, vectorised

    model, start, x, y, batches, n, _ = setup("cpu", "mlp", 6, 5, 16)
    ref = sequential(model, start, x, y, batches, n)
    gmodel, gstart, gx, gy, _, _, gplan = setup("cuda", "mlp", 6, 5, 16)
    got = vectorised(gmodel, gstart, gx, gy, gplan)
    assert max(float((ref[k] - got[k].cpu()).abs().max()) for k in ref) < 1e-4
