"""A plain multi-layer perceptron."""
import torch
from torch import nn
from torch.nn import functional as F


def _relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU of a fresh Linear output: in place without autograd (a new buffer of the FFN's ``(N, 2048)`` size costs
    more than the ReLU itself, measured 4% of R50 inference), out of place with it (in place measured ~3% slower
    over a training step)."""
    return F.relu(x, inplace=not torch.is_grad_enabled())


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (none after the last).

    Args:
        input_dim, hidden_dim, output_dim: feature sizes.
        num_layers: number of Linear layers, >= 1.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., input_dim)`` -> ``(..., output_dim)``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = _relu(x)
        return x


class FFN(nn.Module):
    """The transformer feed-forward block with its residual: ``x + Dropout(Linear(Dropout(ReLU(Linear(x)))))``.

    Args:
        embed_dim: token width.
        feedforward_dim: hidden width.
        dropout: dropout after the activation and after the second Linear.
    """

    def __init__(self, embed_dim: int = 256, feedforward_dim: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(embed_dim, feedforward_dim)
        self.linear2 = nn.Linear(feedforward_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., embed_dim)`` -> ``(..., embed_dim)``."""
        return x + self.dropout(self.linear2(self.dropout(_relu(self.linear1(x)))))
