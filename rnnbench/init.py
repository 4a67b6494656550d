"""Initialisation schemes shared by the built-in cells.

Recurrent schemes act on each (H, H) gate block of ``weight_hh`` separately, so an orthogonal or identity
initialisation means the same thing for a one-block Elman RNN and a four-block LSTM:

- ``default``: torch's U(-1/sqrt(H), 1/sqrt(H)), the init of ``nn.RNN``/``nn.LSTM``/``nn.GRU``.
- ``orthogonal``: each block a random orthogonal matrix (Saxe, McClelland & Ganguli 2014; Henaff et al. 2016).
- ``identity``: each block the identity (Le, Jaitly & Hinton 2015, IRNN).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from rnnbench.validation import choice as check_choice  # noqa: F401 - re-exported for the built-in cells

RECURRENT_INITS: tuple[str, ...] = ("default", "orthogonal", "identity")


def uniform_default_(params: Iterable[Tensor], hidden_size: int) -> None:
    """torch's RNN init: every tensor ~ U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        for p in params:
            nn.init.uniform_(p, -bound, bound)


def recurrent_init_(weight_hh: Tensor, num_blocks: int, scheme: str, key: str = "cell.recurrent_init") -> None:
    """Initialise ``weight_hh`` (num_blocks * H, H) block by block with ``scheme`` (one of RECURRENT_INITS)."""
    check_choice(key, scheme, RECURRENT_INITS)
    hidden_size = weight_hh.shape[1]
    if weight_hh.shape[0] != num_blocks * hidden_size:
        blocks = f"{num_blocks} blocks of ({hidden_size}, {hidden_size})"
        raise ValueError(f"weight_hh of shape {tuple(weight_hh.shape)} is not {blocks}")
    with torch.no_grad():
        for block in weight_hh.chunk(num_blocks, dim=0):  # num_blocks x (H, H) views
            if scheme == "default":
                bound = 1.0 / math.sqrt(hidden_size)
                block.uniform_(-bound, bound)
            elif scheme == "orthogonal":
                block.copy_(nn.init.orthogonal_(torch.empty_like(block)))
            else:
                block.copy_(torch.eye(hidden_size, dtype=block.dtype, device=block.device))


def gate_bias_(bias_ih: Tensor, bias_hh: Tensor, block: int, hidden_size: int, value: float) -> None:
    """Set the EFFECTIVE bias of gate ``block`` to ``value``: torch adds ``bias_ih + bias_hh``, so put ``value``
    in the block of ``bias_ih`` and zero the block of ``bias_hh``."""
    rows = slice(block * hidden_size, (block + 1) * hidden_size)
    with torch.no_grad():
        bias_ih[rows].fill_(value)
        bias_hh[rows].zero_()
