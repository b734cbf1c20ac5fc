"""A plain multi-layer perceptron."""
import torch
from torch import nn
from torch.nn import functional as F


def _relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU of a fresh Linear output: in place without autograd (a new buffer of the FFN's ``(N, 2048)`` size costs
    more than the ReLU itself, measured 4% of R50 inference), out of place with it (in place measured ~3% slower
    over a training step)."""
    return F.relu(x, inplace=not torch.is_grad_enabled())


class _LinearReLULinear(torch.autograd.Function):
    """``linear2(relu(linear1(x)))`` on ``(N, C)`` rows, computed as autograd would, except that the backward masks
    the hidden gradient (a fresh ``(N, hidden)`` product) in place: autograd's ReLU backward writes a second buffer
    of that size, which costs more than the masking itself (~0.4 s of an R50 800x1333 training step)."""

    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2):
        hidden = torch.addmm(bias1, x, weight1.t()).relu_()
        ctx.save_for_backward(x, weight1, weight2, hidden)
        return torch.addmm(bias2, hidden, weight2.t())

    @staticmethod
    def backward(ctx, grad_out):
        x, weight1, weight2, hidden = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        grad_x = grad_w1 = grad_b1 = grad_w2 = grad_b2 = None
        if need_w2:
            grad_w2 = grad_out.t().mm(hidden)
        if need_b2:
            grad_b2 = grad_out.sum(0)
        if need_x or need_w1 or need_b1:
            grad_hidden = grad_out.mm(weight2)
            torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0, grad_input=grad_hidden)
            if need_x:
                grad_x = grad_hidden.mm(weight1)
            if need_w1:
                grad_w1 = grad_hidden.t().mm(x)
            if need_b1:
                grad_b1 = grad_hidden.sum(0)
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


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
        # on (N, input_dim) rows: a Linear of a 2-D input is one matrix product, without reshapes around it
        rows = x.reshape(-1, x.shape[-1])
        for i, layer in enumerate(self.layers):
            rows = layer(rows)
            if i < len(self.layers) - 1:
                rows = _relu(rows)
        return rows.view(*x.shape[:-1], rows.shape[-1])


class FFN(nn.Module):
    """The transformer feed-forward block with its residual: ``x + Dropout(Linear(Dropout(ReLU(Linear(x)))))``.

    Args:
        embed_dim: token width.
        feedforward_dim: hidden width.
        dropout: dropout after the activation and after the second Linear.
    """

    # Without autograd on a CPU, rows go through in blocks of this many: a block's (rows, feedforward_dim) hidden
    # buffer (8 MiB) is reused from block to block, where the whole (N, feedforward_dim) one -- 90 MiB for the ~11k
    # foreground tokens of an 800x1333 image -- is fresh memory the kernel must fault in and zero. A GPU's caching
    # allocator reuses its memory anyway, and there each block would cost kernel launches (R50: ~40 blocks, ~240).
    inference_block_rows = 1024

    def __init__(self, embed_dim: int = 256, feedforward_dim: int = 2048, dropout: float = 0.0):
        super().__init__()
        if feedforward_dim < 1:  # 0 made the block a constant, a negative width a tensor-size error
            raise ValueError(f"FFN: feedforward_dim must be >= 1 (the feed-forward block's hidden width), got "
                             f"{feedforward_dim}")
        self.linear1 = nn.Linear(embed_dim, feedforward_dim)
        self.linear2 = nn.Linear(feedforward_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., embed_dim)`` -> ``(..., embed_dim)``."""
        rows = x.reshape(-1, x.shape[-1])
        if (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and rows.shape[0] > self.inference_block_rows
            and not (self.training and self.dropout.p > 0)
            and not torch.jit.is_tracing()  # a traced graph would keep the block count of its example
        ):
            # nn.Linear's products, with the weights transposed once rather than once per block
            weight1, weight2 = self.linear1.weight.t(), self.linear2.weight.t()
            blocks = []
            for block in rows.split(self.inference_block_rows):
                hidden = _relu(torch.addmm(self.linear1.bias, block, weight1))
                blocks.append(torch.addmm(self.linear2.bias, hidden, weight2).add_(block))
            return torch.cat(blocks).view(x.shape)
        # Its backward runs outside autocast, with the forward's dtypes: under autocast, the module path.
        if (
            torch.is_grad_enabled()
            and not (self.training and self.dropout.p > 0)
            and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled(x.device.type)
        ):
            out = _LinearReLULinear.apply(
                rows, self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias
            )
            return x + out.view(x.shape)
        return x + self.dropout(self.linear2(self.dropout(_relu(self.linear1(rows))))).view(x.shape)
