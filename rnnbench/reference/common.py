"""The result type shared by the reference implementations, and the activations with their derivatives."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


@dataclass
class BPTTResult:
    """Forward outputs and the gradients of ``L = sum(outputs * upstream)``.

    ``outputs`` (B, T, H): h_t for every t. ``state``: the final state (``(h_T,)``, or ``(h_T, c_T)`` for the
    LSTM). ``grads``: dL/dparameter by torch parameter name. ``dx`` (B, T, I): dL/dx. ``dstate``: dL/d(initial
    state), in the order of ``state``.
    """

    outputs: Array
    state: tuple[Array, ...]
    grads: dict[str, Array] = field(default_factory=dict)
    dx: Array | None = None
    dstate: tuple[Array, ...] = ()


def sigmoid(a: Array) -> Array:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # = 1 / (1 + exp(-a)), without overflow


def as_float64(*arrays: object) -> list[Array]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]
