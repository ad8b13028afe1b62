"""Named ranges of the training step, for ``torch.profiler``.

Every stage of a training step runs inside ``with stage(name):``, a ``torch.profiler.record_function`` range
called ``m2f::<name>``: the student's backbone, pixel decoder and transformer decoder, Hungarian matching, the
losses, backward and the optimizer step; the box targets and the box fit of the matched masks (box, SIM); SIM's
copy-paste, paste targets, teacher forward, pseudo masks, teacher statistics, prototypes, bank push and teacher EMA.
A profiler shows them on its timeline and in its tables, and ``tools/benchmark.py`` reads its per-stage times from
them, each exclusive of the stages nested in it (the teacher's networks have no ranges of their own: they count as
"teacher forward"). With no profiler running, entering and leaving a range costs about 4 µs (2-core CPU, measured
over 5,000 ranges); a step runs 7 ranges (mask), up to 9 (box) or up to 16 plus one per image (SIM): well under a
millisecond.
"""

from __future__ import annotations

from torch.profiler import record_function

__all__ = ["STAGE_PREFIX", "stage"]

STAGE_PREFIX = "m2f::"  # the name of every stage range starts with it


def stage(name: str) -> record_function:
    """The profiler range ``m2f::<name>`` (a context manager) around one stage of the training step."""
    return record_function(STAGE_PREFIX + name)
