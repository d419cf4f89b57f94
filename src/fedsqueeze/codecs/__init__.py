"""Codecs: update compressors with real bitstreams. See ``base.Codec`` for the contract."""
from fedsqueeze.codecs.base import Codec, Tensors
from fedsqueeze.codecs.spec import decode_any, make_codec, parse_spec

__all__ = ["Codec", "Tensors", "decode_any", "make_codec", "parse_spec"]
