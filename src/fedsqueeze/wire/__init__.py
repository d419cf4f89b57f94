"""The wire: every message is a self-describing byte string; the ledger counts its length."""
from fedsqueeze.wire.ledger import Ledger, Record
from fedsqueeze.wire.payload import Header, TensorSpec, pack, unpack, peek_codec

__all__ = ["Header", "Ledger", "Record", "TensorSpec", "pack", "peek_codec", "unpack"]
