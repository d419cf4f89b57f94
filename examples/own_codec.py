"""Your own codec: 8-bit uniform quantisation per tensor (min/max + one byte per value), registered
by name and used from a config string, then compared with fp32 on the same run. Runs in seconds.

    python examples/own_codec.py [RUNS_DIR]
"""
import dataclasses
import struct
import sys

import torch
from torch.utils.data import TensorDataset

import fedsqueeze


@fedsqueeze.register_codec("uint8")
@dataclasses.dataclass(frozen=True)
class UInt8(fedsqueeze.Codec):
    """Uniform 8-bit quantisation between each tensor's min and max (deterministic rounding)."""

    codec_id = "uint8"
    levels: int = 255

    def encode_tensor(self, x, seed):
        flat = x.reshape(-1)
        lo, hi = float(flat.min()), float(flat.max())
        scale = (hi - lo) / self.levels or 1.0
        q = torch.round((flat - lo) / scale).clamp(0, self.levels).to(torch.uint8)
        return struct.pack("<ff", lo, scale) + q.numpy().tobytes()

    def decode_tensor(self, data, shape, seed):
        numel = 1
        for d in shape:
            numel *= d
        if len(data) != 8 + numel:  # a receiver never trusts a payload's length
            raise fedsqueeze.PayloadError(f"uint8 chunk holds {len(data)} bytes, expected {8 + numel}")
        lo, scale = struct.unpack_from("<ff", data)
        q = torch.frombuffer(bytearray(data[8:]), dtype=torch.uint8).to(torch.float32)
        return (q * scale + lo).reshape(shape)


g = torch.Generator().manual_seed(0)
x = torch.randn(1500, 16, generator=g)
y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
data = fedsqueeze.FederatedData(TensorDataset(x[:1200], y[:1200]), test=(x[1200:], y[1200:]),
                                partitioner="iid", num_clients=6)
out = sys.argv[1] if len(sys.argv) > 1 else "runs"
for up in ("fp32", "uint8", UInt8(levels=15)):  # a name, or a codec object
    cfg = {"name": "own-codec", "rounds": 8, "output_dir": out, "model": {"name": "mlp", "options": {"hidden": 32}},
           "train": {"clients_per_round": 3, "local_epochs": 3, "batch_size": 32, "lr": 0.2}}
    r = fedsqueeze.run(cfg, data=data, codec_up=up, plot=False)
    s = r.summary()
    print(f"{s['codec_up']:>16}: accuracy {s['final_acc']:.3f}, up {s['mb_up']:.3f} MB")
