"""Share/gather between the agents of a round: direct where the fleet lets them reach
each other, through the coordinator (a mailbox) otherwise.

The strategy says what is shared and gathered (`Instruction.share`, `Instruction.gather`)
and never how; the fleet declares whether a set of agents can reach each other; this
module turns the two into the Task params of pfl_edge.peer_exchange (direct) or into a
tensor the coordinator assembles from the previous phase's replies (mailbox).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pfl_edge import errors
from pfl_edge import peer_exchange as px
from pfl_edge.core.messages import Instruction, Reply
from pfl_edge.values import Scalar


def routed(
    ins: Instruction,
    *,
    direct: bool,
    exchange: int,
    prev_direct: bool,
    prev_shared: Mapping[str, str],
    prev_exchange: int,
    prev_replies: Mapping[str, Reply] | None,
    wait_s: float,
) -> Instruction:
    """`ins` with its share and gather turned into Task params (direct exchange) or its
    gather materialized from the previous phase's replies (mailbox). `prev_replies` is
    None in a round's first phase, where a gather is a strategy's bug (ValueError)."""
    params = dict(ins.params)
    tensors = dict(ins.tensors)
    if ins.share and direct:
        params.update({px.SHARE: ins.share, px.EXCHANGE: exchange})
    g = ins.gather
    if g is not None:
        if prev_replies is None:
            raise ValueError(f"gather {g.name!r} in the first phase of a round")
        if prev_direct:
            wrong = [a for a in g.agents if prev_shared.get(a) != g.source]
            if wrong:
                raise ValueError(f"gather of {g.source!r} from {wrong}, who did not share it")
            spec = px.GatherSpec(g.name, g.source, g.agents, prev_exchange, wait_s)
            params.update(spec.params())
        elif g.agents:
            parts = [prev_replies[a].tensors[g.source] for a in g.agents]
            tensors[g.name] = np.concatenate(parts)
    return Instruction(ins.action, tensors, params, ins.wire)


def gathered(params: Mapping[str, Scalar], mask: np.ndarray | None) -> dict[str, bool] | None:
    """Which agents' tensors a direct gather used, from the reply's mask (tensor
    `px.GATHERED`); None for a task without a direct gather; Rejection where the mask
    does not fit the task."""
    spec = px.GatherSpec.from_params(params)
    if spec is None:
        if mask is not None:
            raise errors.invalid(f"{px.GATHERED!r} answers a task without a gather")
        return None
    if mask is None or mask.shape != (len(spec.agents),) or not np.isin(mask, (0, 1)).all():
        raise errors.invalid(
            f"a gather reply needs {px.GATHERED!r}: {len(spec.agents)} flags 0 or 1"
        )
    return {a: bool(used) for a, used in zip(spec.agents, mask, strict=True)}
