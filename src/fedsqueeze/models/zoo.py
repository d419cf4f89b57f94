"""The model zoo. Every model is built by name from the registry as ``cls(input_shape, num_classes, **options)``.

Image/tabular models read float tensors; the character models (``char_lstm``, ``char_gru``,
``char_lstm_small``) read sequences of character ids and predict the next character.

Models that personalisation methods split (SPATL, FedPer, FedKD) expose two named children,
``encoder`` (shared feature extractor) and ``head`` (predictor), and ``features(x)`` (the encoder
output, flattened) so distillation can match hidden features.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class SplitModel(nn.Module):
    """Base for models with a named encoder/head split: forward = head(flatten(encoder(x)))."""

    encoder: nn.Module
    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.encoder(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _flat(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class LogReg(SplitModel):
    """Multinomial logistic regression (a linear layer on the flattened input)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.encoder = nn.Flatten()
        self.head = nn.Linear(_flat(input_shape), num_classes)


class MLP(SplitModel):
    """Two hidden ReLU layers (McMahan et al. 2017's "2NN" with hidden=200)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 200) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)


def _conv_stack(in_ch: int, widths: tuple[int, ...], kernel: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_ch, w, kernel, padding=kernel // 2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
        in_ch = w
    return nn.Sequential(*layers)


def _spatial_after(input_shape: tuple[int, ...], pools: int) -> int:
    h, w = input_shape[1], input_shape[2]
    for _ in range(pools):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h * w


def _require_image(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        from fedsqueeze.errors import ConfigError
        raise ConfigError(f"model {name!r} needs image input (C, H, W), got shape {input_shape}; "
                          "use model 'mlp' or 'logreg' for flat features, or 'char_lstm', 'char_gru' or "
                          "'char_lstm_small' for character sequences (fortunes)")


class McMahanCNN(SplitModel):
    """The CNN of McMahan et al. 2017: conv5x5-32, pool, conv5x5-64, pool, fc512, fc."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        _require_image("cnn", input_shape)
        self.encoder = nn.Sequential(_conv_stack(input_shape[0], (32, 64), 5), nn.Flatten(),
                                     nn.Linear(64 * _spatial_after(input_shape, 2), 512), nn.ReLU())
        self.head = nn.Linear(512, num_classes)


class SmallCNN(SplitModel):
    """A small CNN: encoder conv3x3-16, pool, conv3x3-32, pool, fc64; head fc."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        _require_image("small_cnn", input_shape)
        self.encoder = nn.Sequential(_conv_stack(input_shape[0], (width, 2 * width), 3), nn.Flatten(),
                                     nn.Linear(2 * width * _spatial_after(input_shape, 2), hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)


# ---- text: character-level recurrent models ---------------------------------------------------
def _check_sizes(name: str, **sizes: int) -> None:
    from fedsqueeze.errors import ConfigError
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {name!r}: option {key} = {value!r} must be an integer >= 1")


class CharEncoder(nn.Module):
    """Embedding then an LSTM/GRU over the sequence; the output is the last position's hidden state.

    Inputs are character ids of any integer dtype (or a float tensor holding ids, e.g. the zero
    input the FLOP counter feeds): they are cast to int64 for the embedding.
    """

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int, cell: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embed, hidden, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x.long()))
        return out[:, -1]


class CharRNN(SplitModel):
    """Next-character model: encoder = embedding + recurrent layers (last hidden state), head = fc.

    Reads ``(N, seq_len)`` character ids; the vocabulary size is ``num_classes`` (a text dataset's
    inputs and targets share one vocabulary). ``features(x)`` is the last hidden state, the hook
    FedKD's hidden-state loss uses; FedPer/SPATL keep ``head`` local. The recurrent units are not
    prunable channels (``channel_groups`` is empty), so SPATL uploads the whole encoder.
    """

    cell, model_name = "lstm", "char_lstm"
    default_embed, default_hidden = 16, 128

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, embed: int | None = None,
                 hidden: int | None = None, layers: int = 1) -> None:
        super().__init__()
        name = self.model_name
        if len(input_shape) != 1:
            from fedsqueeze.errors import ConfigError
            raise ConfigError(f"model {name!r} reads sequences of character ids (input shape (seq_len,)), got "
                              f"{input_shape}; use it with a text dataset such as 'fortunes'")
        embed = self.default_embed if embed is None else embed
        hidden = self.default_hidden if hidden is None else hidden
        _check_sizes(name, embed=embed, hidden=hidden, layers=layers)
        self.encoder = CharEncoder(num_classes, embed, hidden, layers, self.cell)
        self.head = nn.Linear(hidden, num_classes)

    def channel_groups(self) -> list:
        return []


class CharLSTM(CharRNN):
    """Character LSTM (embedding 16, hidden 128 by default): next-character prediction."""

    cell, model_name = "lstm", "char_lstm"


class CharGRU(CharRNN):
    """Character GRU (embedding 16, hidden 128 by default): next-character prediction."""

    cell, model_name = "gru", "char_gru"


class CharLSTMSmall(CharLSTM):
    """A small character LSTM (embedding 8, hidden 64): e.g. FedKD's shared student."""

    model_name = "char_lstm_small"
    default_embed, default_hidden = 8, 64


MODEL_PARAMS_MAX = 2_000_000_000  # parameters (8 GB as float32): model.options beyond this are a typo
MODEL_OPTION_MAX = 1 << 24        # any integer option (a width, a depth, a hidden size)


def _check_options(name: str, cls: type, input_shape: tuple[int, ...], num_classes: int, options: dict) -> None:
    """``model.options`` validated before the model is built: integers in [0, MODEL_OPTION_MAX], and the
    model they describe (built on the meta device: no memory, no random numbers) at most
    ``MODEL_PARAMS_MAX`` parameters."""
    from fedsqueeze.errors import ConfigError

    for key, value in options.items():
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MODEL_OPTION_MAX:
            raise ConfigError(f"model {name!r}: option {key} = {value:,} is out of range; sizes are integers "
                              f"in [0, {MODEL_OPTION_MAX:,}]")
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            size = sum(p.numel() for p in cls(tuple(input_shape), num_classes, **options).parameters())
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001  the real build below reports it (or the model cannot be built on meta)
        return
    if size > MODEL_PARAMS_MAX:
        raise ConfigError(f"model {name!r} with options {options} has {size:,} parameters (more than "
                          f"{MODEL_PARAMS_MAX:,}); lower model.options")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **options) -> nn.Module:
    from fedsqueeze.errors import ConfigError
    from fedsqueeze.registry import MODELS

    cls = MODELS.get(name)
    if options:
        _check_options(name, cls, tuple(input_shape), num_classes, options)
    try:
        return cls(tuple(input_shape), num_classes, **options)
    except TypeError as e:
        raise ConfigError(f"model {name!r}: {e}") from e
    except (RuntimeError, ValueError) as e:  # e.g. a negative size: torch's message names it
        raise ConfigError(f"model {name!r} cannot be built with options {options}: "
                          f"{str(e).splitlines()[0][:160]}; fix model.options") from e


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
