"""Readable NumPy references: forward passes and hand-derived backpropagation through time (no autograd).

A teaching aid and a test oracle. Each ``*_bptt`` function takes weights in the layout of the torch cell of the
same name, runs ``x`` (B, T, I) forward from a zero state (or the given one), and back-propagates the loss

.. math:: L = \\sum_{b,t,k} h_t[b, k] \\, \\mathrm{upstream}[b, t, k]

so that ``upstream`` (B, T, H) is dL/dh_t arriving from above at each step. The result holds the outputs, the
final state, dL/d(every parameter) under the torch parameter names, dL/dx and dL/d(initial state).
"""

from __future__ import annotations

from rnnbench.reference.common import BPTTResult
from rnnbench.reference.gru import gru_bptt
from rnnbench.reference.lstm import lstm_bptt
from rnnbench.reference.rnn import rnn_bptt

__all__ = ["BPTTResult", "gru_bptt", "lstm_bptt", "rnn_bptt"]
