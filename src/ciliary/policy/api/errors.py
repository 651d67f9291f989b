"""One error type for every policy document problem, each problem one line.

An import is all-or-nothing, and whoever wrote the policy has to fix it without guessing, so every
problem names the file, the document, the dotted path of the field and what was expected, on one
line, in the project's style (``policy.yaml: document 2 (CiliumNetworkPolicy shop/web):
spec.egress[0].toPorts[0].ports[0].endPort: must be >= port (80)``). :class:`PolicyError` carries
all of them; ``str()`` is the first.
"""

from __future__ import annotations

from collections.abc import Sequence

from ciliary.core.yamldoc import one_line, show

__all__ = ["PolicyError", "one_line", "show"]


class PolicyError(Exception):
    """Policy documents that cannot be used. ``str()`` is the first problem, on one line.

    ``problems`` holds every problem found (one line each, the first equal to ``str(self)``), so a
    front end can show them all at once.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        lines = [problems] if isinstance(problems, str) else list(problems)
        if not lines:
            raise ValueError("PolicyError needs at least one problem")
        self.problems: list[str] = [one_line(p) for p in lines]
        super().__init__(self.problems[0])

    def __str__(self) -> str:
        return self.problems[0]
