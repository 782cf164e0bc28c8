"""Which instance represents a series: the middle one, chosen the same way everywhere.

Instances are ordered by InstanceNumber (absent last), then by their position along the
slice normal (Instance.slice_position, absent last: it separates slices that share a
number, e.g. two stacks of one series), then by SOPInstanceUID (so the order is total and
the same on every replica). With n instances the representative is the one at index
(n - 1) // 2: the middle slice of a stack, the earlier of the two middle ones when n is
even. Its header is the series' representative header (GetAttributes answers from it) and
its image the series' preview. The store applies the same order to all of a series'
instances and keeps the header and preview nearest the whole series' middle.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from seriesflow.v1 import series_store_pb2 as pb


def order_key(instance: pb.Instance) -> tuple[float, float, str]:
    number = instance.instance_number if instance.HasField("instance_number") else math.inf
    position = instance.slice_position if instance.HasField("slice_position") else math.inf
    return float(number), position, instance.sop_instance_uid


def middle(instances: Mapping[int, pb.Instance], available: Collection[int] | None = None) -> int:
    """The key (spool sequence) of the middle instance of `instances`.

    When `available` is given, the nearest instance (by rank in the order) that is in it
    wins, the earlier one on a tie: its file is what can be read. Raises ValueError when
    nothing qualifies."""
    ranked = sorted(instances, key=lambda seq: order_key(instances[seq]))
    if not ranked:
        raise ValueError("no instances to choose from")
    centre = (len(ranked) - 1) // 2
    if available is None:
        return ranked[centre]
    candidates = [i for i, seq in enumerate(ranked) if seq in available]
    if not candidates:
        raise ValueError("none of the instances is available")
    best = min(candidates, key=lambda i: (abs(i - centre), i))
    return ranked[best]
