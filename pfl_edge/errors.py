"""Errors that travel: a refused message carries a code and a reason to its sender."""

from __future__ import annotations

from pfl_edge.v1 import messages_pb2 as pb


class Rejection(Exception):
    """A message was refused; `code` is a pfl_edge.v1.ErrorCode, `reason` says what was wrong."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    @property
    def code_name(self) -> str:
        return pb.ErrorCode.Name(self.code).removeprefix("ERROR_CODE_")

    def __str__(self) -> str:
        return f"{self.code_name}: {self.reason}"


def invalid(reason: str) -> Rejection:
    return Rejection(pb.ERROR_CODE_INVALID_ARGUMENT, reason)


def too_large(reason: str) -> Rejection:
    return Rejection(pb.ERROR_CODE_RESOURCE_EXHAUSTED, reason)


def data_loss(reason: str) -> Rejection:
    return Rejection(pb.ERROR_CODE_DATA_LOSS, reason)
