"""The wire: every message is a self-describing byte string; the ledger counts its length."""
from fedsqueeze.wire.ledger import Ledger, Record
from fedsqueeze.wire.payload import Header, Limits, SpecMismatch, TensorSpec, pack, unpack, peek_codec

__all__ = ["Header", "Ledger", "Limits", "Record", "SpecMismatch", "TensorSpec", "pack", "peek_codec", "unpack"]
