"""Modular arithmetic without brackets (Delétang et al. 2023, the regular level of neural_networks_chomsky_hierarchy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, RegisterTask, TaskConfig, TaskSpec, hookimpl, validation
from rnnbench.tasks._common import LastStepClassification, check_choice, check_int, lag_facts, memoryless_score

VARIANTS = ("simple",)
PLUS, MINUS, TIMES = range(3)
OPERATORS = "+-*"
"""Operator tokens follow the numbers: token ``modulus + k`` is ``OPERATORS[k]``."""
MAX_MODULUS = 20


@dataclass
class ModularArithmeticConfig(TaskConfig):
    dependency_length: int = 41
    variant: str = "simple"
    modulus: int = 5


def evaluate(numbers: Tensor, operators: Tensor, modulus: int) -> Tensor:
    """The value modulo ``modulus`` of ``n0 o1 n1 o2 n2 ...`` with the usual precedence (``*`` before ``+`` and
    ``-``, left to right): numbers (B, n + 1), operators (B, n) in {PLUS, MINUS, TIMES} -> (B,).

    A term is a run of numbers joined by ``*``; a ``-`` negates the term it starts. Its product is a segmented
    prefix product (Hillis-Steele: log2(n + 1) vector steps, the segment restarting at each ``+`` or ``-``), and
    the value is the sum of each term's product, read at the term's last number."""
    signed = numbers.clone()
    signed[:, 1:] = torch.where(operators == MINUS, (-numbers[:, 1:]) % modulus, numbers[:, 1:])
    start = torch.ones_like(numbers, dtype=torch.bool)
    start[:, 1:] = operators != TIMES
    values, started = signed, start
    span = 1
    while span < numbers.shape[1]:
        joined = torch.where(started[:, span:], values[:, span:], values[:, span:] * values[:, :-span] % modulus)
        values = torch.cat([values[:, :span], joined], dim=1)
        started = torch.cat([started[:, :span], started[:, span:] | started[:, :-span]], dim=1)
        span *= 2
    last = torch.ones_like(start)
    last[:, :-1] = start[:, 1:]  # a term ends where the next one starts, or at the end
    return (values * last).sum(dim=1) % modulus


def answer_law(pairs: int, modulus: int) -> np.ndarray:
    """The joint law ``P(last number = a, value = y)`` (modulus x modulus) of an expression with ``pairs``
    operator-number pairs after its first number: a Markov chain over (sum of the finished terms, signed product
    of the open term), both modulo m, run for the first ``pairs - 1`` pairs; the last pair is then added
    explicitly, for each value a of the last number."""
    m = modulus
    if pairs == 0:
        return np.eye(m) / m  # one number: it is the value
    step = np.zeros((m * m, m * m))
    for total in range(m):
        for term in range(m):
            here = total * m + term
            for a in range(m):
                step[here, ((total + term) % m) * m + a] += 1 / (3 * m)  # + a: a new term
                step[here, ((total + term) % m) * m + (-a) % m] += 1 / (3 * m)  # - a
                step[here, total * m + (term * a) % m] += 1 / (3 * m)  # * a: the term grows
    state = np.zeros(m * m)
    state[:m] = 1 / m  # total 0, the first number uniform
    state = state @ np.linalg.matrix_power(step, pairs - 1)
    joint = np.zeros((m, m))
    for total in range(m):
        for term in range(m):
            p = state[total * m + term] / (3 * m)
            for a in range(m):
                joint[a, (total + term + a) % m] += p
                joint[a, (total + term - a) % m] += p
                joint[a, (total + term * a) % m] += p
    return joint


class ModularArithmeticTask(LastStepClassification):
    r"""An expression ``n0 o1 n1 ... on nn`` of numbers ~ U{0, ..., m - 1} and operators ~ U{+, -, *}, one-hot over
    the m + 3 symbols (numbers first, then ``+ - *``); the class is its value modulo m = ``task.modulus`` (5 by
    default, as in the paper), with ``*`` before ``+`` and ``-``, read out at the last step.

    Definition (Delétang et al. 2023, "Modular Arithmetic (Simple)", ``tasks/regular/modular_arithmetic.py``;
    modulo 5: ``1 + 2 * 3 = 2``, ``1 - 1 - 1 = 4``, ``0 * 1 + 4 * 3 - 2 = 0``). An expression has an odd
    number of symbols: as in the reference generator, length T gives T symbols when T is odd and T - 1 when it
    is even. A finite automaton over (sum so far, open product) recognises it.

    ``dependency_length`` is T, the requested length: the sequence length is T, or T - 1 for an even T; T >= 1
    (T = 1 or 2: a single number, its own value).

    Lag (``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max``): from the first number to the readout at
    the last step: L - 1 for the sequence length L (min = median = max). The value is a function of every
    symbol; in a given expression a zero factor can make earlier symbols irrelevant, which the lag (a property of
    the task, not of one sequence) does not count. Exact.

    Baseline (the best predictor that sees only the last input, always a number): the conditional entropy of the
    value given the last number, and the accuracy of the most likely value given it, from the exact law of
    :func:`answer_law`. Exactly 0 and 1 for a single number; close to ln m and 1/m for long expressions, but not
    equal: a product that is 0 modulo m leaves the value unchanged, so the values are not quite uniform.
    """

    def __init__(self, dependency_length: int = 41, variant: str = "simple", modulus: int = 5) -> None:
        self.variant = check_choice("task.variant", variant, VARIANTS)
        self.dependency_length = check_int("task.dependency_length", dependency_length, 1)
        self.sequence_length = dependency_length if dependency_length % 2 else dependency_length - 1
        self.modulus = validation.integer("task.modulus", modulus, 2, MAX_MODULUS,
                                          "the exact baseline tracks modulus^2 states")
        self.input_size = modulus + len(OPERATORS)
        self.output_size = modulus

    @property
    def pairs(self) -> int:
        """Operator-number pairs after the first number."""
        return (self.sequence_length - 1) // 2

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        m, n = self.modulus, self.pairs
        numbers = torch.randint(0, m, (batch_size, n + 1), generator=generator, device=generator.device)
        operators = torch.randint(0, len(OPERATORS), (batch_size, n), generator=generator, device=generator.device)
        tokens = torch.empty(batch_size, self.sequence_length, dtype=torch.long, device=numbers.device)
        tokens[:, 0::2] = numbers
        tokens[:, 1::2] = m + operators
        return Batch(x=F.one_hot(tokens, self.input_size).float(), y=evaluate(numbers, operators, m))

    def baseline(self) -> dict[str, float]:
        return memoryless_score(answer_law(self.pairs, self.modulus))

    def describe(self) -> dict[str, object]:
        L = self.sequence_length
        return super().describe() | {"variant": self.variant} | lag_facts(
            L - 1, L - 1, L - 1, "first number -> last-step readout")


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="modular_arithmetic",
            task=ModularArithmeticTask,
            config=ModularArithmeticConfig,
            description="the value modulo 5 of an expression of numbers and + - * without brackets (regular)",
            source="Delétang et al. 2023 (neural_networks_chomsky_hierarchy)",
        )
    )
