"""What ``fedsqueeze list`` prints for the built-in parts, without importing them (or torch).

``CATALOG`` holds each built-in name's one-line description (the first docstring line, as
``Registry.describe`` gives it) and, for models, the parameter count on a 1x28x28 input with 10 classes
(None for sequence models). It is generated from the code by :func:`build` and checked against it by
``tests/test_catalog.py``; after changing a built-in's docstring or size, regenerate it with
``python -m fedsqueeze.catalog``. Names missing here (new built-ins, registered parts, installed plugins)
are described by importing them, as before.
"""
from __future__ import annotations

from typing import Any

# metrics that are not registry entries (computed by the evaluation itself)
PSEUDO_METRICS = {
    "accuracy": "Share of samples whose largest output is the label (the default, as global_acc).",
    "loss": "The task loss (train.loss) on the test set (as global_loss).",
    "top<k>": "Share of samples whose label is among the k largest outputs, e.g. top5.",
}

CATALOG: dict[str, dict[str, tuple[str, Any]]] = {
    'algorithms': {
        'fedavg': ('Federated averaging of client updates weighted by sample count (McMahan et al. 2017).', None),
        'fedprox': ("FedAvg with a proximal term (μ/2)·‖w − w_global‖² in each client's objective (Li et al. 2020).", None),
        'local': ('Each client trains alone on its own data; nothing crosses the wire (personalised baseline).', None),
        'scaffold': ('SCAFFOLD (Karimireddy et al. 2020): local steps corrected by control variates c − c_i (option II).', None),
        'fedper': ('Shared encoder averaged as in FedAvg, personal head kept on each client (Arivazhagan et al. 2019).', None),
        'spatl': ('Shared encoder + local head, SCAFFOLD gradient control, salient-filter upload (Yu et al. SC22).', None),
        'quped': ('Quantized personalized models (per-client bits/architecture) distilled with a FedAvg global model.', None),
        'local_quant': ("Local-only training of QuPeD's quantized personal models (no global model, zero bytes).", None),
        'fedavg_ft': ("FedAvg whose personal model is the received global model fine-tuned on the client's data.", None),
        'pfedme': ('Personalised FL with Moreau envelopes (Dinh et al. 2020): bi-level θ_i / w local updates.', None),
        'perfedavg': ('Federated MAML (Fallah et al. 2020): the global model is trained to personalise in one step.', None),
        'feddkd': ("FedAvg, then S decentralized distillation steps of the global model toward the local models' maps.", None),
        'fedkd': ('Private teacher + shared student by adaptive mutual distillation; dynamic-SVD updates (Wu et al. 2022).', None),
    },
    'codecs': {
        'fp32': ('Identity: every value as a 4-byte IEEE float (the uncompressed baseline).', None),
        'fp16': ('Every value rounded to a 2-byte IEEE half float (round to nearest, saturating range).', None),
        'bf16': ('Every value rounded to bfloat16 (fp32 range, 8-bit mantissa).', None),
        'drive': ('DRIVE: Hadamard rotation, 1 sign bit per coordinate + one scale (Vargaftik et al. 2021).', None),
        'eden': ('EDEN: Hadamard rotation, b-bit Lloyd–Max levels for N(0,1), unbiased scale (Vargaftik et al. 2022).', None),
        'svd': ("FedKD dynamic SVD: smallest rank keeping a fraction ``threshold`` of each matrix's energy.", None),
        'powersgd': ('PowerSGD: rank-r power iteration per matrix, warm start and error feedback (Vogels et al. 2019).', None),
        'rdq': ('Uniform quantiser with one step size, entropy-coded (γ universal code or ANS); Mitchell et al. 2022.', None),
        'pipeline': ("Transforms (e.g. svd) followed by one codec; the last stage's payload is the body.", None),
        'topk': ('Top-K sparsification: the k largest-magnitude entries, positions Rice-coded or as a bitmap.', None),
        'randk': ('Random-K sparsification: k seed-chosen entries scaled by d/k (unbiased); only values sent.', None),
        'qsgd': ('QSGD: per-bucket norm, s levels with stochastic rounding, Elias-coded gaps/signs/levels.', None),
        'terngrad': ('TernGrad: scale max|g| per tensor (after 2.5σ clipping), stochastic ternary values, 5 trits per byte.', None),
        'signsgd': ('signSGD: one sign bit per entry and one fp32 scale ||p||_1/d per tensor (EF-signSGD).', None),
        'threelc': ('3LC: {-1,0,1} x max|a|*m, five trits per byte, runs of all-zero bytes folded.', None),
        'ef': ('Error feedback around any codec: compresses x + residual; the wire carries the inner payload.', None),
        'rowsparse': ('Bitmap of non-zero output rows (and optionally input columns) + the kept block as fp32/fp16.', None),
    },
    'models': {
        'mlp': ('Two hidden ReLU layers (McMahan et al. 2017\'s "2NN" with hidden=200).', 199210),
        'cnn': ('The CNN of McMahan et al. 2017: conv5x5-32, pool, conv5x5-64, pool, fc512, fc.', 1663370),
        'small_cnn': ('A small CNN: encoder conv3x3-16, pool, conv3x3-32, pool, fc64; head fc.', 105866),
        'logreg': ('Multinomial logistic regression (a linear layer on the flattened input).', 7850),
        'resnet20': ('ResNet-20 (CIFAR variant, option-A shortcuts): encoder = conv stack + pooling, head = fc.', 269434),
        'vgg11': ('VGG-11 (CIFAR variant: 8 conv3x3 layers 64..512, batch norm, 5 pools, one fc head).', 9227210),
        'char_lstm': ('Character LSTM (embedding 16, hidden 128 by default): next-character prediction.', None),
        'char_gru': ('Character GRU (embedding 16, hidden 128 by default): next-character prediction.', None),
        'char_lstm_small': ("A small character LSTM (embedding 8, hidden 64): e.g. FedKD's shared student.", None),
    },
    'datasets': {
        'fashion_mnist': ('Fashion-MNIST (Xiao et al., 2017): 60,000/10,000 grey 28x28 images of 10 clothing classes.', None),
        'digits': ("scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), split 80/20 by class.", None),
        'synthetic': ('Gaussian classes with random means: ``num_samples`` in total, split 80/20 by class.', None),
        'fortunes': ('Debian fortune cookies: next-character prediction, one client per category file (and language).', None),
        'cifar10': ('CIFAR-10 (Krizhevsky, 2009): 50,000/10,000 colour 32x32 images of 10 classes (binary release).', None),
        'cifar100': ('CIFAR-100 (Krizhevsky, 2009): 50,000/10,000 colour 32x32 images; 100 fine or 20 coarse classes.', None),
    },
    'partitioners': {
        'iid': ('Uniformly random, equal-sized (+-1) client datasets.', None),
        'dirichlet': ('Per-class Dirichlet label skew: each class is spread over clients by Dir(alpha).', None),
        'shards': ('Label-sorted shards, ``shards_per_client`` random ones per client.', None),
        'natural': ("The dataset's own clients (e.g. fortunes' category files), given as one client id per sample.", None),
    },
    'losses': {
        'cross_entropy': ('Cross-entropy of logits against integer class labels.', None),
        'mse': ('Mean squared error against float targets ((N,) or (N, k)); with reduction="none", one value per sample.', None),
    },
    'metrics': {
        'mae': ('Mean absolute error against float targets.', None),
    },
}


def build() -> dict[str, dict[str, tuple[str, Any]]]:
    """The catalog from the code: imports every built-in part and builds every model."""
    from fedsqueeze.errors import FedsqueezeError
    from fedsqueeze.models.zoo import build_model, count_parameters
    from fedsqueeze.registry import ALL

    out: dict[str, dict[str, tuple[str, Any]]] = {}
    for kind, reg in ALL.items():
        entries = {}
        for name, entry in reg._entries.items():
            if not isinstance(entry, str):  # registered at run time, not built in
                continue
            size = None
            if kind == "models":
                try:
                    size = count_parameters(build_model(name, (1, 28, 28), 10))
                except FedsqueezeError:  # a sequence model: its size depends on the vocabulary
                    size = None
            entries[name] = (reg.describe(name), size)
        out[kind] = entries
    return out


def render(catalog: dict) -> str:
    lines = ["CATALOG: dict[str, dict[str, tuple[str, Any]]] = {"]
    for kind, entries in catalog.items():
        lines.append(f"    {kind!r}: {{")
        for name, (desc, size) in entries.items():
            lines.append(f"        {name!r}: ({desc!r}, {size!r}),")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)


def write() -> None:
    """Regenerate ``CATALOG`` in this file from the code."""
    import re
    from pathlib import Path

    path = Path(__file__)
    text = path.read_text()
    new = re.sub(r"CATALOG: dict\[str, dict\[str, tuple\[str, Any\]\]\] = \{\n(?:.*?\n)?\}", lambda m: render(build()),
                 text, count=1, flags=re.S)
    path.write_text(new)


if __name__ == "__main__":
    write()
    print(f"wrote {__file__}")
