"""Reversible (invertible) residual steps and a sequence of them that stores no activations.

A *step* maps a state, a tuple of tensors, to a new state of the same shapes and has an
exact inverse: additive coupling, ``part_i <- part_i + F(other parts)`` for one part at a
time, undone by ``part_i <- part_i - F(other parts)`` in the reverse order (RevNet, Gomez et
al. 2017; i-RevNet; LIRE, Moriakov et al. 2022, for learned primal-dual). Inverting rebuilds
the inputs from the outputs up to floating-point rounding (about 1e-7 relative in float32).

:func:`reversible_sequence` runs steps ``s_1 .. s_K`` without keeping their activations:
the forward pass runs under ``no_grad`` and keeps only the final state; the backward pass
walks the steps in reverse, rebuilds each step's input from its output with ``inverse``,
re-runs the step with autograd on and back-propagates through that step alone. Training
memory is then one step's activations plus the state, whatever K; the price is one extra
forward evaluation of every step. Gradients equal those of the plain (stored) composition up
to the rounding of the rebuilt inputs (tests/test_learned.py checks this in float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

State = tuple[torch.Tensor, ...]


class ReversibleStep(nn.Module):
    """A state -> state map with an exact inverse; subclasses define both."""

    def forward(self, state: State) -> State:  # pragma: no cover - interface
        raise NotImplementedError

    def inverse(self, state: State) -> State:  # pragma: no cover - interface
        raise NotImplementedError


class _Reversible(torch.autograd.Function):
    """Autograd of a sequence of reversible steps: the inputs are rebuilt in backward."""

    @staticmethod
    def forward(ctx, steps, n_state: int, *args):
        state, params = args[:n_state], args[n_state:]
        with torch.no_grad():
            for step in steps:
                state = step(state)
        state = tuple(t.detach() for t in state)
        ctx.steps, ctx.n_state, ctx.params = steps, n_state, params
        ctx.save_for_backward(*state)
        return state

    @staticmethod
    def backward(ctx, *grads):
        state = ctx.saved_tensors
        grads = tuple(torch.zeros_like(s) if g is None else g for s, g in zip(state, grads))
        param_grads = [torch.zeros_like(p) for p in ctx.params]
        index = {id(p): i for i, p in enumerate(ctx.params)}
        for step in reversed(ctx.steps):
            with torch.no_grad():
                previous = step.inverse(state)
            with torch.enable_grad():
                inputs = tuple(t.detach().requires_grad_(True) for t in previous)
                outputs = step(inputs)
                own = [p for p in step.parameters() if p.requires_grad]
                found = torch.autograd.grad(outputs, (*inputs, *own), grads, allow_unused=True)
            grads = tuple(torch.zeros_like(t) if g is None else g for t, g in zip(inputs, found[:len(inputs)]))
            for p, g in zip(own, found[len(inputs):]):
                if g is not None:
                    param_grads[index[id(p)]] += g
            state = tuple(t.detach() for t in previous)
        return (None, None, *grads, *param_grads)


def reversible_sequence(steps: Sequence[ReversibleStep], state: State, memory_saving: bool = True) -> State:
    """The state after ``steps`` applied in order; with ``memory_saving`` no step's activations
    are kept for backward (they are recomputed from the outputs, see the module docstring)."""
    if not memory_saving or not torch.is_grad_enabled():
        for step in steps:
            state = step(state)
        return tuple(state)
    params = [p for step in steps for p in step.parameters() if p.requires_grad]
    unique = list({id(p): p for p in params}.values())
    return _Reversible.apply(list(steps), len(state), *state, *unique)
