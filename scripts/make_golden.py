"""Write golden payload fixtures (tests/golden/<codec>.bin + .json) for codecs that lack one.

Run once when a codec is added: `python scripts/make_golden.py [CODEC_ID ...]`. Never regenerate an
existing fixture to make a test pass: a changed format must get a new format version instead.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root / "tests"))

from codec_kit import all_codec_ids, default_codec, long_tail_update, sample_update  # noqa: E402
from fedsqueeze.codecs.spec import make_codec  # noqa: E402

# fixtures of a format option the default-config fixtures do not reach: name -> (spec, input)
EXTRA = {"drive-split": ("drive(layout='split')", long_tail_update),
         "eden-split": ("eden(bits=2, layout='split')", long_tail_update)}

out_dir = root / "tests" / "golden"
out_dir.mkdir(exist_ok=True)
for cid in sys.argv[1:] or all_codec_ids() + list(EXTRA):
    path = out_dir / f"{cid}.bin"
    if path.exists():
        print(f"{cid}: fixture exists, left alone")
        continue
    codec = make_codec(EXTRA[cid][0]) if cid in EXTRA else default_codec(cid)
    payload = codec.encode((EXTRA[cid][1] if cid in EXTRA else sample_update)(11), seed=2024)
    decoded = codec.decode(payload)
    path.write_bytes(payload)
    (out_dir / f"{cid}.json").write_text(json.dumps(
        {k: [float(t).hex() for t in v.reshape(-1).double()] for k, v in decoded.items()}))
    print(f"{cid}: wrote {len(payload)} bytes")
