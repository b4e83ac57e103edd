"""When the collapse monitor evaluates: step 0, a geometric schedule, an optional fixed interval, the last step."""

from __future__ import annotations


def evaluation_steps(max_steps: int, points_per_decade: int = 10, every_n_steps: int | None = None) -> list[int]:
    """Steps ``{0, T} ∪ {round(10^(k/points_per_decade)) : k ≥ 0} ∪ {j·every_n_steps}`` up to ``T = max_steps``.

    Step ``s`` means "after ``s`` optimiser updates"; step 0 is the initialisation.
    """
    steps = {0, max_steps}
    exponent = 0
    while (step := round(10 ** (exponent / points_per_decade))) <= max_steps:
        steps.add(step)
        exponent += 1
    if every_n_steps:
        steps.update(range(every_n_steps, max_steps + 1, every_n_steps))
    return sorted(steps)
