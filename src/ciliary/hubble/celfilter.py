"""CEL filters over flows: ``FlowFilter.experimental.cel_expression``, as upstream's Hubble
(``pkg/hubble/filters/cel_expression.go``) evaluates them.

The environment is upstream's: one variable, ``_flow``, of the message type ``flow.Flow`` (the
name ``flow`` would clash with the proto package), and the container ``flow``, so enum
constants read ``Verdict.DROPPED`` (or ``flow.Verdict.DROPPED``) and compare with the enum
fields as integers; fields keep their proto names (``_flow.source.pod_name``,
``_flow.l4.TCP.destination_port``, ``has(_flow.l4.UDP)``), wrappers read as their value or null
(``_flow.is_reply == false``). Expressions are type-checked when the filter is built: one that
does not parse, names an unknown field, or is not boolean is an error (the server answers
InvalidArgument), as is one over upstream's size limit (4096 characters).

The expressions of one filter are alternatives: a flow matches if any of them evaluates to
true; one whose evaluation fails (a division by zero, a missing map key) does not match, as
upstream.

The evaluator is Google's CEL (cel-cpp behind ``cel-expr-python``), which reads our generated
protobuf messages natively with their descriptors, so a flow is never converted for it. It is
imported on first use: servers that never see a CEL filter do not load it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING

from ciliary.hubble.api.flow import flow_pb2

if TYPE_CHECKING:
    from cel_expr_python import cel

FLOW_VARIABLE = "_flow"
"""Upstream's variable name for the flow being filtered."""
MAX_EXPRESSION_SIZE = 4096
"""Upstream's ``celExpressionMaxSize``, in characters."""


class CELError(ValueError):
    """An expression that cannot be used as a filter; the message says why."""


@cache
def _env() -> cel.Env:
    from cel_expr_python import cel  # noqa: PLC0415 - loaded on first CEL filter only

    return cel.NewEnv(
        variables={FLOW_VARIABLE: cel.Type(flow_pb2.Flow.DESCRIPTOR.full_name)},
        container=flow_pb2.DESCRIPTOR.package,
    )


def _reason(err: Exception) -> str:
    """cel-cpp's status text without its status-code prefix and trailing code tag."""
    text = str(err).strip()
    text = text.removeprefix("INVALID_ARGUMENT: ")
    return text.removesuffix(" [INVALID_ARGUMENT]")


def compile_expression(expression: str) -> cel.Expression:
    """Parses and type-checks one filter expression; raises CELError."""
    from cel_expr_python import cel  # noqa: PLC0415

    if len(expression) > MAX_EXPRESSION_SIZE:
        raise CELError(
            f"error compiling CEL expression: expression is {len(expression)} characters, "
            f"more than the limit of {MAX_EXPRESSION_SIZE}"
        )
    try:
        compiled = _env().compile(expression)
    except RuntimeError as err:
        raise CELError(f"error compiling CEL expression: {_reason(err)}") from None
    result = compiled.return_type()
    if result != cel.Type.BOOL:
        raise CELError(
            f"error compiling CEL expression: got {result.name().lower()!r}, "
            "wanted 'bool' result type"
        )
    return compiled


def cel_filter(expressions: Sequence[str]) -> Callable[[flow_pb2.Flow], bool]:
    """A predicate true for flows on which any of ``expressions`` evaluates to true."""
    compiled = tuple(compile_expression(e) for e in expressions)

    def match(flow: flow_pb2.Flow) -> bool:
        data = {FLOW_VARIABLE: flow}
        for expression in compiled:
            try:
                if expression.eval(data=data).value() is True:
                    return True
            except RuntimeError:
                continue  # an evaluation error does not match (upstream logs and skips)
        return False

    return match


__all__ = ["FLOW_VARIABLE", "MAX_EXPRESSION_SIZE", "CELError", "cel_filter", "compile_expression"]
