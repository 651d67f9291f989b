"""Settings for the whole suite.

Hypothesis: no per-example deadline. Its default (200 ms) fails an example that a busy 2-core
machine merely paused (GC, a neighbour test's lab), which made property tests flaky under load
(seen: ``test_rendered_field_selectors_round_trip``); what a property test checks is the
property, and the suite's time budget is kept by its own timeouts."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("ciliary", deadline=None)
settings.load_profile("ciliary")
