"""fedsqueeze: communication-efficient federated learning with real bytes on the wire."""
from fedsqueeze.api import resume, run
from fedsqueeze.config import Config, load_config
from fedsqueeze.errors import (CodecError, ConfigError, DataError, FedsqueezeError, PayloadError,
                               RegistryError)
from fedsqueeze.metrics.results import Result

__version__ = "0.1.0"
__all__ = ["CodecError", "Config", "ConfigError", "DataError", "FedsqueezeError", "PayloadError",
           "RegistryError", "Result", "load_config", "resume", "run", "__version__"]
