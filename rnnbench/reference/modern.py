r"""Step-by-step float64 references of the modern cells, written from the papers' equations (a test oracle).

Each function takes the input ``x`` (B, T, I) and the weights, by the cell's parameter names, as plain tensors,
and returns the outputs h_t (B, T, H) of a run from the zero state, one time step at a time in float64 (complex128
for the LRU). They share no code with the cells (``rnnbench.plugins``): no scan, no stabiliser, no
parametrisation. Pass leaf tensors that require gradients and autograd gives the reference gradients of the
same computation. Equations, with :math:`\sigma` the logistic function:

- :func:`mingru`: z = sigma(W_z x + b_z), h~ = g(W_h x + b_h), h = (1 - z) h + z h~, g(v) = v + 1/2 (v >= 0),
  sigma(v) (v < 0). Feng et al. 2024, arXiv 2410.01201.
- :func:`minlstm`: f = sigma(.), i = sigma(.), h = f/(f+i) h + i/(f+i) g(W_h x + b_h). Feng et al. 2024.
- :func:`lru`: lambda = exp(-exp(nu) + i exp(theta)), s = lambda s + exp(gamma_log) (B x), y = Re(C s) + D x.
  Orvieto et al. 2023, arXiv 2303.06349.
- :func:`s6`: Mamba's Algorithm 2 with an input projection u = W_in x + b_in; per channel d and state n:
  s[d, n] = exp(Delta[d] A[d, n]) s[d, n] + Delta[d] B[n] u[d]; y[d] = sum_n C[n] s[d, n] + D[d] u[d]. Gu & Dao
  2023, arXiv 2312.00752.
- :func:`slstm`: the paper's unstabilised sLSTM, c = f c + exp(i~) tanh(z~), n = f n + exp(i~),
  h = sigma(o~) c / n (f = sigma(f~) or exp(f~)). Beck et al. 2024, arXiv 2405.04517, Sec. 2.2.
- :func:`indrnn`: h = relu(W x + b + clip(u) h). Li et al. 2018, arXiv 1803.04831.
- :func:`orthogonal_rnn`: W = exp(A), A = tril(X) - tril(X)^T by scaling and squaring of the Taylor series;
  h = sign(z) relu(|z| + b), z = W_ih x + W h (modReLU), or tanh(z + b). Lezcano-Casado & Martínez-Rubio 2019,
  arXiv 1901.08428.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

F64 = torch.float64


def _sigmoid(v: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-v))


def _g(v: Tensor) -> Tensor:
    return torch.where(v >= 0, v + 0.5, _sigmoid(v))


def _steps(x: Tensor) -> list[Tensor]:
    return [x[:, t].to(F64) for t in range(x.shape[1])]


def mingru(x: Tensor, weight_ih: Tensor, bias_ih: Tensor) -> Tensor:
    H = weight_ih.shape[0] // 2
    Wz, Wh, bz, bh = weight_ih[:H], weight_ih[H:], bias_ih[:H], bias_ih[H:]
    h = torch.zeros(x.shape[0], H, dtype=F64)
    out = []
    for x_t in _steps(x):
        z = _sigmoid(x_t @ Wz.T + bz)
        h_tilde = _g(x_t @ Wh.T + bh)
        h = (1 - z) * h + z * h_tilde
        out.append(h)
    return torch.stack(out, 1)


def minlstm(x: Tensor, weight_ih: Tensor, bias_ih: Tensor) -> Tensor:
    H = weight_ih.shape[0] // 3
    W = [weight_ih[k * H:(k + 1) * H] for k in range(3)]
    b = [bias_ih[k * H:(k + 1) * H] for k in range(3)]
    h = torch.zeros(x.shape[0], H, dtype=F64)
    out = []
    for x_t in _steps(x):
        f = _sigmoid(x_t @ W[0].T + b[0])
        i = _sigmoid(x_t @ W[1].T + b[1])
        h = f / (f + i) * h + i / (f + i) * _g(x_t @ W[2].T + b[2])
        out.append(h)
    return torch.stack(out, 1)


def lru(x: Tensor, nu_log: Tensor, theta_log: Tensor, gamma_log: Tensor, B_re: Tensor, B_im: Tensor,
        C_re: Tensor, C_im: Tensor, D: Tensor, output_activation: str = "identity") -> Tensor:
    lam = torch.exp(torch.complex(-torch.exp(nu_log), torch.exp(theta_log)))  # (N,) complex128
    gamma = torch.exp(gamma_log)
    B = torch.complex(B_re, B_im)
    C = torch.complex(C_re, C_im)
    s = torch.zeros(x.shape[0], nu_log.shape[0], dtype=torch.complex128)
    out = []
    for x_t in _steps(x):
        s = lam * s + gamma * (x_t.to(torch.complex128) @ B.T)
        y = (s @ C.T).real + x_t @ D.T
        if output_activation == "gelu":
            y = 0.5 * y * (1.0 + torch.erf(y / math.sqrt(2.0)))
        elif output_activation == "tanh":
            y = torch.tanh(y)
        out.append(y)
    return torch.stack(out, 1)


def s6(x: Tensor, weight_in: Tensor, bias_in: Tensor, weight_x: Tensor, weight_dt: Tensor, bias_dt: Tensor,
       A_log: Tensor, D: Tensor) -> Tensor:
    H, N = A_log.shape
    R = weight_dt.shape[1]
    A = -torch.exp(A_log)  # (H, N)
    s = torch.zeros(x.shape[0], H, N, dtype=F64)
    out = []
    for x_t in _steps(x):
        u = x_t @ weight_in.T + bias_in  # (B, H)
        proj = u @ weight_x.T
        delta, Bt, Ct = proj[:, :R], proj[:, R:R + N], proj[:, R + N:]
        dt = torch.log1p(torch.exp(delta @ weight_dt.T + bias_dt))  # softplus, (B, H)
        A_bar = torch.exp(dt[:, :, None] * A[None])  # zero-order hold
        B_bar = dt[:, :, None] * Bt[:, None, :]  # Euler
        s = A_bar * s + B_bar * u[:, :, None]
        y = torch.einsum("bdn,bn->bd", s, Ct) + D * u
        out.append(y)
    return torch.stack(out, 1)


def slstm(x: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
          forget_gate: str = "sigmoid") -> Tensor:
    H = weight_hh.shape[1]
    h = c = n = torch.zeros(x.shape[0], H, dtype=F64)
    out = []
    for x_t in _steps(x):
        pre = x_t @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh
        i_raw, f_raw, z_raw, o_raw = (pre[:, k * H:(k + 1) * H] for k in range(4))
        i = torch.exp(i_raw)
        f = _sigmoid(f_raw) if forget_gate == "sigmoid" else torch.exp(f_raw)
        c = f * c + i * torch.tanh(z_raw)
        n = f * n + i
        h = _sigmoid(o_raw) * c / n
        out.append(h)
    return torch.stack(out, 1)


def indrnn(x: Tensor, weight_ih: Tensor, bias_ih: Tensor, weight_hh: Tensor, u_max: float,
           nonlinearity: str = "relu") -> Tensor:
    u = torch.clamp(weight_hh, -u_max, u_max)
    h = torch.zeros(x.shape[0], weight_hh.shape[0], dtype=F64)
    out = []
    for x_t in _steps(x):
        pre = x_t @ weight_ih.T + bias_ih + u * h
        h = torch.clamp(pre, min=0.0) if nonlinearity == "relu" else torch.tanh(pre)
        out.append(h)
    return torch.stack(out, 1)


def expm(A: Tensor, terms: int = 24) -> Tensor:
    """exp(A) by scaling and squaring of the Taylor series (float64; no torch.matrix_exp)."""
    norm = float(A.detach().abs().sum(dim=0).max())
    squarings = max(0, math.ceil(math.log2(norm)) + 1) if norm > 0 else 0
    scaled = A / 2**squarings
    result = term = torch.eye(A.shape[0], dtype=A.dtype)
    for k in range(1, terms):
        term = term @ scaled / k
        result = result + term
    for _ in range(squarings):
        result = result @ result
    return result


def orthogonal_rnn(x: Tensor, weight_ih: Tensor, bias: Tensor, original: Tensor,
                   nonlinearity: str = "modrelu") -> Tensor:
    lower = torch.tril(original)
    W = expm(lower - lower.T)
    h = torch.zeros(x.shape[0], W.shape[0], dtype=F64)
    out = []
    for x_t in _steps(x):
        z = x_t @ weight_ih.T + h @ W.T
        h = torch.sign(z) * torch.clamp(z.abs() + bias, min=0.0) if nonlinearity == "modrelu" else torch.tanh(z + bias)
        out.append(h)
    return torch.stack(out, 1)
