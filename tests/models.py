"""Small models shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    )


class RecurrentClassifier(nn.Module):
    def __init__(self, cell: type[nn.RNNBase] = nn.LSTM) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8)
        self.rnn = cell(8, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.rnn(self.embedding(tokens))
        return self.head(out[:, -1])


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.attention(x, x, x, need_weights=False)
        return self.norm(out + x)


class TiedLanguageModel(nn.Module):
    """Embedding tied to the output projection; takes keyword arguments and returns a dict."""

    def __init__(self, vocab: int = 12, width: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.decoder = nn.Linear(width, vocab, bias=False)
        self.decoder.weight = self.embedding.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        hidden = torch.tanh(self.hidden(self.embedding(input_ids)))
        if attention_mask is not None:
            hidden = hidden * attention_mask.unsqueeze(-1)
        return {"logits": self.decoder(hidden), "hidden": hidden}


def inputs_for(name: str) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    if name == "mlp":
        return torch.randn(5, 6, generator=generator)
    if name == "cnn":
        return torch.randn(5, 1, 8, 8, generator=generator)
    if name in ("lstm", "gru"):
        return torch.randint(0, 20, (5, 7), generator=generator)
    if name == "attention":
        return torch.randn(5, 4, 8, generator=generator)
    raise KeyError(name)


MODELS = {
    "mlp": mlp,
    "cnn": cnn,
    "lstm": lambda: RecurrentClassifier(nn.LSTM),
    "gru": lambda: RecurrentClassifier(nn.GRU),
    "attention": Attention,
}
