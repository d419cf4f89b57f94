"""Name -> implementation, for every pluggable part. Entries are imported lazily on first use.

Adding a codec, algorithm, model, dataset or partitioner = its module + one line here + its test.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any

from fedsqueeze.errors import RegistryError


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        if name not in self._entries:
            hint = difflib.get_close_matches(name, self._entries, n=1)
            raise RegistryError(
                f"unknown {self.kind} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; available: {', '.join(self._entries)}. `fedsqueeze list` describes them.")
        module, _, attr = self._entries[name].partition(":")
        return getattr(importlib.import_module(module), attr)

    def describe(self, name: str) -> str:
        obj = self.get(name)
        doc = (obj.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


CODECS = Registry("codec", {
    "fp32": "fedsqueeze.codecs.floats:Float32",
    "fp16": "fedsqueeze.codecs.floats:Float16",
    "bf16": "fedsqueeze.codecs.floats:BFloat16",
    "drive": "fedsqueeze.codecs.drive:Drive",
    "eden": "fedsqueeze.codecs.eden:Eden",
    "svd": "fedsqueeze.codecs.svd:SVD",
    "powersgd": "fedsqueeze.codecs.powersgd:PowerSGD",
    "rdq": "fedsqueeze.codecs.rdq:RDQ",
    "pipeline": "fedsqueeze.codecs.pipeline:Pipeline",
    "topk": "fedsqueeze.codecs.topk:TopK",
    "randk": "fedsqueeze.codecs.randk:RandK",
    "qsgd": "fedsqueeze.codecs.qsgd:QSGD",
    "terngrad": "fedsqueeze.codecs.terngrad:TernGrad",
    "signsgd": "fedsqueeze.codecs.signsgd:SignSGD",
    "threelc": "fedsqueeze.codecs.threelc:ThreeLC",
    "ef": "fedsqueeze.codecs.ef:ErrorFeedback",
    "rowsparse": "fedsqueeze.codecs.rowsparse:RowSparse",
})

ALGORITHMS = Registry("algorithm", {
    "fedavg": "fedsqueeze.algorithms.fedavg:FedAvg",
    "fedprox": "fedsqueeze.algorithms.fedprox:FedProx",
    "local": "fedsqueeze.algorithms.local:LocalOnly",
    "scaffold": "fedsqueeze.algorithms.scaffold:Scaffold",
    "fedper": "fedsqueeze.algorithms.fedper:FedPer",
    "spatl": "fedsqueeze.algorithms.spatl:SPATL",
    "quped": "fedsqueeze.algorithms.quped:QuPeD",
    "local_quant": "fedsqueeze.algorithms.quped:LocalQuant",
    "fedavg_ft": "fedsqueeze.algorithms.fedavg_ft:FedAvgFT",
    "feddkd": "fedsqueeze.algorithms.feddkd:FedDKD",
    "fedkd": "fedsqueeze.algorithms.fedkd:FedKD",
})

MODELS = Registry("model", {
    "mlp": "fedsqueeze.models.zoo:MLP",
    "cnn": "fedsqueeze.models.zoo:McMahanCNN",
    "small_cnn": "fedsqueeze.models.zoo:SmallCNN",
    "logreg": "fedsqueeze.models.zoo:LogReg",
    "resnet20": "fedsqueeze.models.resnet:ResNet",
    "vgg11": "fedsqueeze.models.vgg:VGG11",
    "char_lstm": "fedsqueeze.models.zoo:CharLSTM",
    "char_gru": "fedsqueeze.models.zoo:CharGRU",
    "char_lstm_small": "fedsqueeze.models.zoo:CharLSTMSmall",
})

DATASETS = Registry("dataset", {
    "fashion_mnist": "fedsqueeze.data.sources:load_fashion_mnist",
    "digits": "fedsqueeze.data.sources:load_digits",
    "synthetic": "fedsqueeze.data.sources:load_synthetic",
    "fortunes": "fedsqueeze.data.fortunes:load_fortunes",
    "cifar10": "fedsqueeze.data.cifar:load_cifar10",
    "cifar100": "fedsqueeze.data.cifar:load_cifar100",
})

PARTITIONERS = Registry("partitioner", {
    "iid": "fedsqueeze.data.partition:iid",
    "dirichlet": "fedsqueeze.data.partition:dirichlet",
    "shards": "fedsqueeze.data.partition:shards",
    "natural": "fedsqueeze.data.partition:natural",
})

ALL = {"algorithms": ALGORITHMS, "codecs": CODECS, "models": MODELS,
       "datasets": DATASETS, "partitioners": PARTITIONERS}
