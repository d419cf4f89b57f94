"""fedsqueeze: communication-efficient federated learning with real bytes on the wire.

The public API (docs/api.md): ``run``/``resume``, configuration, your own parts (``register_*``,
``FederatedData``) and the building blocks they plug into. Everything else is internal.
"""
from fedsqueeze.algorithms.base import Algorithm
from fedsqueeze.api import resume, run
from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.config import Config, load_config
from fedsqueeze.data.federated import FederatedData
from fedsqueeze.data.partition import Partition, dirichlet, iid, make_partition, natural, shards
from fedsqueeze.data.sources import Dataset
from fedsqueeze.errors import (CodecError, ConfigError, DataError, FedsqueezeError, PayloadError,
                               RegistryError)
from fedsqueeze.metrics.results import Result
from fedsqueeze.models.zoo import build_model
from fedsqueeze.plugins import (register_algorithm, register_codec, register_dataset, register_model,
                                register_partitioner, registered, unregister)

__version__ = "0.1.0"
__all__ = [
    # running
    "run", "resume", "Config", "load_config", "Result",
    # your own parts
    "register_model", "register_codec", "register_algorithm", "register_dataset", "register_partitioner",
    "unregister", "registered", "FederatedData",
    # building blocks
    "Dataset", "Partition", "make_partition", "iid", "dirichlet", "shards", "natural",
    "Codec", "make_codec", "Algorithm", "build_model",
    # errors
    "FedsqueezeError", "ConfigError", "DataError", "CodecError", "PayloadError", "RegistryError",
    "__version__",
]
