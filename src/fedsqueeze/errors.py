"""Exception types. Every error a user can cause is one of these, with a message naming the fix."""
from __future__ import annotations


class FedsqueezeError(Exception):
    """Base class: the CLI prints these as one line and exits with code 2."""


class ConfigError(FedsqueezeError):
    """An experiment configuration is invalid (unknown key, bad value, impossible combination)."""


class DataError(FedsqueezeError):
    """A dataset is missing, truncated or malformed, or cannot be partitioned as asked."""


class PayloadError(FedsqueezeError):
    """Bytes received from the wire are malformed: truncated, corrupted, or not ours."""


class CodecError(FedsqueezeError):
    """A codec was misused: bad configuration or input it cannot encode (NaN/Inf, wrong type)."""


class RegistryError(ConfigError):
    """A name (algorithm, codec, model, dataset, partitioner) is not registered."""


class MissingExtraError(FedsqueezeError):
    """An optional dependency is not installed; the message names the ``pip install 'fedsqueeze[...]'`` extra."""


class SafeIOError(FedsqueezeError):
    """A fedsqueeze state file (checkpoint, client state, mirror) is malformed: truncated, corrupted, or not
    in fedsqueeze's safe format."""


class LegacyRunError(FedsqueezeError):
    """A run folder holds pickle files written by an older fedsqueeze; they are refused, never unpickled."""


def require_matplotlib():
    """``matplotlib.pyplot`` on the Agg backend, or a one-line error naming the ``plots`` extra."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("plots need matplotlib, which is not installed: "
                                "pip install 'fedsqueeze[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
