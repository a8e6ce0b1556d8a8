"""The displacement pairs of I2E and the timestep orders (docs/conversion.md): plain Python, so that a
command line is checked without importing torch."""

from __future__ import annotations

import operator
from collections.abc import Sequence

NUM_STEPS = 8

# Positions 1..9 of the 3x3 neighbourhood, row-major (5 = centre).
# Each group holds equivalent (from, to) displacement pairs; the first pair is
# the one used when vectors are not randomised.
GROUPS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((5, 6), (1, 2), (2, 3), (4, 5), (7, 8), (8, 9)),  # alpha, horizontal
    ((5, 2), (4, 1), (6, 3), (7, 4), (8, 5), (9, 6)),  # alpha, vertical
    ((5, 3), (4, 2), (7, 5), (8, 6)),  # beta, diagonal
    ((5, 1), (6, 2), (8, 4), (9, 5)),  # beta, anti-diagonal
    ((9, 4), (6, 1)),  # gamma
    ((4, 3), (7, 6)),  # gamma
    ((3, 8), (2, 7)),  # gamma
    ((8, 1), (9, 2)),  # gamma
)

ORDERS: dict[str, tuple[int, ...]] = {
    "alpha_beta_gamma": (0, 1, 2, 3, 4, 5, 6, 7),
    "alpha_gamma_beta": (0, 1, 4, 5, 6, 7, 2, 3),
    "beta_alpha_gamma": (2, 3, 0, 1, 4, 5, 6, 7),
    "beta_gamma_alpha": (2, 3, 4, 5, 6, 7, 0, 1),
    "gamma_alpha_beta": (4, 5, 6, 7, 0, 1, 2, 3),
    "gamma_beta_alpha": (4, 5, 6, 7, 2, 3, 0, 1),
}

DEFAULT_ORDER = "gamma_alpha_beta"


def _position_rc(p: int) -> tuple[int, int]:
    return (p - 1) // 3, (p - 1) % 3


def resolve_order(order: str | Sequence[int]) -> tuple[int, ...]:
    """Turn a preset name or an explicit list of 8 group indices into a tuple."""
    valid = ", ".join(ORDERS)
    if isinstance(order, str):
        if order not in ORDERS:
            raise ValueError(
                f"unknown I2E order {order!r}; valid presets: {valid} "
                f"(or a list of {NUM_STEPS} group indices in 0..{len(GROUPS) - 1})"
            )
        return ORDERS[order]
    try:
        items = list(order)
        # bool is an int subclass but True/False as group indices is surely a mistake.
        groups = tuple(operator.index(g) for g in items if not isinstance(g, bool))
    except TypeError:
        items, groups = [], ()
    if len(groups) != NUM_STEPS or len(items) != NUM_STEPS or any(not 0 <= g < len(GROUPS) for g in groups):
        raise ValueError(
            f"invalid I2E order {order!r}; expected a preset name ({valid}) "
            f"or a list of {NUM_STEPS} group indices in 0..{len(GROUPS) - 1}"
        )
    return groups


def _order_label(order: str | Sequence[int]) -> str:
    return order if isinstance(order, str) else str(list(resolve_order(order)))


def fixed_pairs(
    order: str | Sequence[int] = DEFAULT_ORDER,
) -> tuple[tuple[int, int], ...]:
    """The deterministic (from, to) pair of each timestep: its group's first pair."""
    return tuple(GROUPS[g][0] for g in resolve_order(order))
