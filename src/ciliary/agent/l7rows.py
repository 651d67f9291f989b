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
``l7.latency_ns`` and the client's port are kept (:class:`~ciliary.hubble.ring.FlowRows`).
The observer counts the metrics once per template (the latency histograms from the rows'
latencies) and the ring makes a flow whole only for a reader. Within one batch the agent's
state does not change (it is decoded in one go on the event loop), so a template holds for all
of its rows.

Groups: a request's flow is its group's request template; a response's is its group's
response template for the response's whole milliseconds (the summary's ``3ms``), so a
response template is keyed by (group, latency // 1 ms). The client's port (a request's source
port, a response's destination port: ``ring.DESTINATION_PORT``) is a row's own, so a client's
requests on new connections share templates too; no metric reads it (port-distribution and
flows-to-world read a request's destination port, never a response's); the one thing it
decides besides itself, the Service whose frontend is the client's address and port
(``source_service`` of the request, ``destination_service`` of the response), is looked up
once per distinct port and keys the templates.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ciliary.agent.flows import FlowDecoder
from ciliary.core.l7record import L7Batch
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.ring import DESTINATION_PORT, FlowRows, flow_template

__all__ = ["decode_l7_batch"]


def decode_l7_batch(decoder: FlowDecoder, batch: L7Batch) -> FlowRows:
    """The flows of ``batch``'s events (request ``i`` then its response, for the ``events``
    the batch carries), as templates and columns (see the module doc)."""
    templates: list[flow_pb2.Flow] = []
    requests: dict[tuple[int, int], int] = {}
    responses: dict[tuple[int, int, int], int] = {}
    index: list[int] = []
    times: list[int] = []
    latencies: list[int] = []
    ports: list[int] = []
    services: dict[tuple[int, int], int] = {}
    numbers: dict[tuple[str, str] | None, int] = {}
    service_by_addr = decoder.getters.service_by_addr
    pairs, n = batch.pairs, batch.events
    for i, (g, time_ns, latency_ns, port) in enumerate(
        zip(batch.group, batch.time_ns, batch.latency_ns, batch.client_port, strict=True)
    ):
        request, response = pairs[g]
        svc = services.get((g, port))
        if svc is None:  # the client's (address, port) as a Service frontend (decode_l7's)
            found = service_by_addr(request.source.ip, port)
            svc = services[(g, port)] = numbers.setdefault(found, len(numbers))
        t = requests.get((g, svc))
        if t is None:
            t = requests[(g, svc)] = len(templates)
            client = replace(request.source, port=port)
            flow = decoder.decode_l7(replace(request, source=client))
            templates.append(flow_template(flow))
        index.append(t)
        times.append(time_ns)
        latencies.append(0)
        ports.append(port)
        if 2 * i + 1 >= n:  # the batch was cut after this request (a full queue)
            break
        key = (g, latency_ns // 1_000_000, svc)
        t = responses.get(key)
        if t is None:
            t = responses[key] = len(templates)
            client = replace(response.destination, port=port)
            flow = decoder.decode_l7(replace(response, latency_ns=latency_ns, destination=client))
            templates.append(flow_template(flow, destination=True))
        index.append(t)
        times.append(time_ns + latency_ns)
        latencies.append(latency_ns)
        ports.append(port | DESTINATION_PORT)
    template_index = np.array(index, dtype=np.intp)
    return FlowRows(
        templates=templates,
        template_index=template_index,
        counts=np.bincount(template_index, minlength=len(templates)).astype(np.intp),
        time_ns=np.array(times, dtype=np.int64),
        source_port=np.array(ports, dtype=np.uint32),
        latency_ns=np.array(latencies, dtype=np.int64),
    )
