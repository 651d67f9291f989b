"""A batch of a proxy's L7 records (``L7Batch``: one read of Envoy's access log) into Hubble
flows as columns (#15, the keep-alive benchmark).

Why: a Flow per request and per response, each through the decoder, the metrics and the ring,
was most of the agent's CPU while pods made HTTP requests through the node's Envoy (~150 µs a
request, ~30 % of a core at 2k requests/s on the bench, competing with Envoy and the pods for
the machine's two cores). A pod's requests on one connection differ only in their time and
latency (and the milliseconds of the response's summary), so as ``flowrows`` does for the
datapath's records, each group of alike flows gets one *template*, made by the ``seven``
family itself (``FlowDecoder.decode_l7`` of the group's first record: field for field the flow
the one-by-one path makes), and per flow only the row's group, wall-clock time and
``l7.latency_ns`` are kept (:class:`~ciliary.hubble.ring.FlowRows`; the L4 source port, the
same for a group, is a row's column as for the datapath's flows, where row filters read it).
The observer counts the metrics once per template (the latency histograms from the rows'
latencies) and the ring makes a flow whole only for a reader. Within one batch the agent's
state does not change (it is decoded in one go on the event loop), so a template holds for all
of its rows.

Groups: a request's flow is its group's request template; a response's is its group's
response template for the response's whole milliseconds (the summary's ``3ms``), so a
response template is keyed by (group, latency // 1 ms).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ciliary.agent.flows import FlowDecoder
from ciliary.core.l7record import L7Batch
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.ring import FlowRows, flow_template

__all__ = ["decode_l7_batch"]


def decode_l7_batch(decoder: FlowDecoder, batch: L7Batch) -> FlowRows:
    """The flows of ``batch``'s events (request ``i`` then its response, for the ``events``
    the batch carries), as templates and columns (see the module doc)."""
    templates: list[flow_pb2.Flow] = []
    ports: list[int] = []
    """Each template's L4 source port (a row's column: the ring's row filters read it there)."""
    requests: dict[int, int] = {}
    responses: dict[tuple[int, int], int] = {}
    index: list[int] = []
    times: list[int] = []
    latencies: list[int] = []
    pairs, n = batch.pairs, batch.events
    for i, (g, time_ns, latency_ns) in enumerate(
        zip(batch.group, batch.time_ns, batch.latency_ns, strict=True)
    ):
        t = requests.get(g)
        if t is None:
            t = requests[g] = len(templates)
            ports.append(pairs[g][0].source.port)
            templates.append(flow_template(decoder.decode_l7(pairs[g][0])))
        index.append(t)
        times.append(time_ns)
        latencies.append(0)
        if 2 * i + 1 >= n:  # the batch was cut after this request (a full queue)
            break
        key = (g, latency_ns // 1_000_000)
        t = responses.get(key)
        if t is None:
            t = responses[key] = len(templates)
            response = replace(pairs[g][1], latency_ns=latency_ns)
            ports.append(response.source.port)
            templates.append(flow_template(decoder.decode_l7(response)))
        index.append(t)
        times.append(time_ns + latency_ns)
        latencies.append(latency_ns)
    template_index = np.array(index, dtype=np.intp)
    return FlowRows(
        templates=templates,
        template_index=template_index,
        counts=np.bincount(template_index, minlength=len(templates)).astype(np.intp),
        time_ns=np.array(times, dtype=np.int64),
        source_port=np.array(ports, dtype=np.uint16)[template_index],
        latency_ns=np.array(latencies, dtype=np.int64),
    )
