"""ringflow's error classes under their public names, and how to recover one
from the RuntimeError that torch wraps it in under DDP."""

from __future__ import annotations

import re

from . import _C
from ._C import Error, InvalidArgument, MismatchError, PeerError, TimeoutError

CLASSES = (Error, InvalidArgument, MismatchError, PeerError, TimeoutError)
for _cls in CLASSES:
    # Tracebacks and repr() then say ringflow.PeerError, the documented name.
    _cls.__module__ = "ringflow"

# DDP's backward re-raises a failed communication hook as a plain
# RuntimeError whose text embeds "<ClassName>: <message>".
_EMBEDDED = re.compile(r"\b(InvalidArgument|MismatchError|PeerError|TimeoutError): (.*)", re.S)


def error_of(exc: BaseException) -> Error | InvalidArgument | None:
    """The ringflow error behind `exc`: `exc` itself, its cause or context,
    or the one DDP folded into a RuntimeError's text; None if there is none.

        try:
            loss.backward()              # DDP over ringflow
        except RuntimeError as e:
            err = ringflow.error_of(e)
            if isinstance(err, ringflow.PeerError): ...
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, CLASSES):
            return exc
        match = _EMBEDDED.search(str(exc))
        if match:
            return getattr(_C, match.group(1))(match.group(2).strip())
        exc = exc.__cause__ or exc.__context__
    return None
