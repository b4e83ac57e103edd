"""When the collapse monitor evaluates: step 0, a geometric schedule, an optional fixed interval, the last step."""

from __future__ import annotations


def evaluation_steps(
    max_steps: int, points_per_decade: int = 10, every_n_steps: int | None = None, steps_per_epoch: int | None = None
) -> list[int]:
    """Steps ``{0, T} ∪ {round(10^(k/points_per_decade))·E : k ≥ 0} ∪ {j·every_n_steps}`` up to ``T = max_steps``.

    ``E = steps_per_epoch`` makes the geometric points epochs, each evaluated at its last step (log-spaced epochs,
    as Papyan, Han & Donoho 2020 measure); None (E = 1) makes them steps. Step ``s`` means "after ``s`` optimiser
    updates"; step 0 is the initialisation.
    """
    unit = steps_per_epoch or 1
    steps = {0, max_steps}
    exponent = 0
    while (step := round(10 ** (exponent / points_per_decade)) * unit) <= max_steps:
        steps.add(step)
        exponent += 1
    if every_n_steps:
        steps.update(range(every_n_steps, max_steps + 1, every_n_steps))
    return sorted(steps)
