"""Unit tests for dhtd.api.status: domain errors to gRPC status codes."""

from __future__ import annotations

import inspect
import logging

import grpc
import pytest

from dhtd import errors
from dhtd.api.status import STATUS_OF, status_of

EXPECTED = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidRecord: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
}


def domain_errors() -> list[type[errors.DhtdError]]:
    return [
        cls for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.DhtdError) and cls is not errors.DhtdError
    ]


def make(cls: type[errors.DhtdError]) -> errors.DhtdError:
    if cls is errors.InvalidArgument:
        return errors.InvalidArgument("peer_id", "is empty")
    return cls("what went wrong")


def test_every_domain_error_has_a_code() -> None:
    assert set(domain_errors()) == set(EXPECTED)
    assert dict(STATUS_OF) == EXPECTED


@pytest.mark.parametrize("cls", sorted(EXPECTED, key=lambda c: c.__name__))
def test_domain_error_maps_to_its_code_with_its_message(cls: type[errors.DhtdError]) -> None:
    exc = make(cls)
    code, message = status_of(exc)
    assert code == EXPECTED[cls]
    assert message == str(exc)


def test_invalid_argument_message_names_the_field() -> None:
    assert status_of(errors.InvalidArgument("cid", "not a CID: bad")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "cid: not a CID: bad")


def test_subclasses_map_like_their_base() -> None:
    class NoProviders(errors.NotFound):
        pass

    assert status_of(NoProviders("none")) == (grpc.StatusCode.NOT_FOUND, "none")


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("secret /home/user/.dhtd/key leaked"),
        KeyError("secret"),
        errors.DhtdError("secret base-class error"),
        ExceptionGroup("secret", [ValueError("secret")]),
    ],
)
def test_anything_else_is_internal_without_its_text(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="dhtd.api"):
        code, message = status_of(exc)
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in message
    assert message == f"internal error: {type(exc).__name__}"
    # The details go to the log, with the traceback, for the operator.
    [record] = caplog.records
    assert record.exc_info is not None
    assert record.exc_info[1] is exc


def test_the_docstring_table_lists_every_domain_error() -> None:
    from dhtd.api import status

    doc = status.__doc__ or ""
    for cls, code in EXPECTED.items():
        assert f"| {cls.__name__} " in doc and f"| {code.name} " in doc, cls


def text_of(length: int) -> str:
    """``length`` characters whose every prefix is distinct from a shorter one."""
    return ("0123456789" * (length // 10 + 1))[:length]


# Any status message is at most 400 characters (docs/limits.md); a cut one ends in "…".
@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, ""),
        (399, text_of(399)),
        (400, text_of(400)),
        (401, text_of(399) + "…"),
        (100_000, text_of(399) + "…"),
    ],
)
def test_status_messages_are_at_most_400_characters(length: int, expected: str) -> None:
    code, message = status_of(errors.Unavailable(text_of(length)))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message == expected
    assert len(message) <= 400


def test_a_long_invalid_argument_is_cut_after_its_field_name() -> None:
    code, message = status_of(errors.InvalidArgument("key", "x" * 1000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "key: " + "x" * 394 + "…"
    assert len(message) == 400


def test_a_group_from_a_nursery_is_judged_by_its_first_domain_error() -> None:
    from dhtd.errors import NotFound, Unavailable

    nested = ExceptionGroup("walks", [ExceptionGroup("inner", [Unavailable("no peers")]),
                                      NotFound("nothing")])
    assert status_of(nested) == (grpc.StatusCode.UNAVAILABLE, "no peers")
    assert status_of(ExceptionGroup("g", [RuntimeError("bug")]))[0] == grpc.StatusCode.INTERNAL
