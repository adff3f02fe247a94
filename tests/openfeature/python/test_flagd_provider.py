"""The real OpenFeature Python SDK and flagd provider (RPC mode, direct mutual TLS) against a
real supplier: the answers for practices in every state, the errors, the configuration-change
event after a halt, and the identities the supplier refuses."""

import sys
import threading

import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.exception import (
    ErrorCode,
    ProviderFatalError,
    ProviderNotReadyError,
)
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

# The line the Rust driver waits for before it applies a halt.
READY_FOR_HALT = "READY-FOR-HALT"

# How long to wait for the configuration change after asking for the halt.
EVENT_TIMEOUT_S = 30

ON = (True, "enabled", Reason.TARGETING_MATCH)
OFF = (False, "disabled", Reason.TARGETING_MATCH)
NOT_HELD = (False, "unknown", Reason.UNKNOWN)


def ask(client, feature, ods, default=False):
    return client.get_boolean_details(
        feature, default, EvaluationContext(targeting_key=ods)
    )


def answer(details):
    return (details.value, details.variant, details.reason)


def test_the_backends_provider_is_ready(backend):
    assert backend.get_provider_status() == ProviderStatus.READY
    assert backend.provider.get_metadata().name == "FlagdProvider"


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("enabled", ON),
        ("halted", OFF),
        ("opted_out", OFF),
        ("closed", OFF),
        ("not_held", NOT_HELD),
    ],
)
# The supplier's explicit value and variant win over the code default, whatever it is: a
# provider that put the default in place of the value would fail open with `True`.
@pytest.mark.parametrize("default", [False, True])
def test_a_practice_in_each_state(backend, supplier, state, expected, default):
    details = ask(backend, supplier.feature, supplier.practices[state], default)
    assert answer(details) == expected, details
    assert details.error_code is None, details
    assert details.flag_key == supplier.feature
    # openfeature-provider-flagd 0.6.1 does not pass flag metadata on (the supplier sends our
    # reason, deciding command, sequence and supplier name): Python backends cannot see why.
    assert dict(details.flag_metadata) == {}, details


def test_lower_case_ods_codes_are_accepted(backend, supplier):
    details = ask(backend, supplier.feature, supplier.practices["enabled"].lower())
    assert answer(details) == ON, details


@pytest.mark.parametrize("default", [False, True])
def test_an_unknown_feature_is_flag_not_found_and_the_code_default(
    backend, supplier, default
):
    details = ask(backend, "no-such-feature", supplier.practices["enabled"], default)
    assert details.error_code == ErrorCode.FLAG_NOT_FOUND, details
    assert details.reason == Reason.ERROR
    assert (details.value, details.variant) == (default, None)


def test_a_non_boolean_evaluation_is_a_type_mismatch_and_the_code_default(
    backend, supplier
):
    context = EvaluationContext(targeting_key=supplier.practices["enabled"])
    text = backend.get_string_details(supplier.feature, "fallback", context)
    assert (text.value, text.error_code, text.reason) == (
        "fallback",
        ErrorCode.TYPE_MISMATCH,
        Reason.ERROR,
    ), text
    number = backend.get_integer_details(supplier.feature, 7, context)
    assert (number.value, number.error_code) == (7, ErrorCode.TYPE_MISMATCH), number
    # The provider replaces the server's message with the bare status code.
    assert "INVALID_ARGUMENT" in text.error_message, text


# The evaluation contexts a backend might get wrong, given a practice's ODS code.
BAD_CONTEXTS = {
    "no-context": lambda ods: None,
    "no-targeting-key": lambda ods: EvaluationContext(),
    "code-in-another-attribute": lambda ods: EvaluationContext(attributes={"ods": ods}),
    "not-an-ods-code": lambda ods: EvaluationContext(targeting_key="not-an-ods-code"),
}


@pytest.mark.parametrize("bad", BAD_CONTEXTS)
def test_a_missing_or_malformed_targeting_key_is_an_error_and_the_code_default(
    backend, supplier, bad
):
    context = BAD_CONTEXTS[bad](supplier.practices["enabled"])
    details = backend.get_boolean_details(supplier.feature, False, context)
    assert (details.value, details.reason) == (False, Reason.ERROR), details
    # The supplier answers INVALID_ARGUMENT naming `targetingKey`; provider 0.6.1 reports every
    # INVALID_ARGUMENT as a type mismatch and drops the message.
    assert details.error_code == ErrorCode.TYPE_MISMATCH, details
    # A code default of True would be returned as it is: the reason to always pass False.
    fail_open = backend.get_boolean_details(supplier.feature, True, context)
    assert (fail_open.value, fail_open.error_code) == (True, ErrorCode.TYPE_MISMATCH)


def test_a_halt_is_a_configuration_change_and_the_practice_then_answers_false(
    backend, supplier, capsys
):
    ods = supplier.practices["halted_during_test"]
    assert answer(ask(backend, supplier.feature, ods)) == ON
    changed = threading.Event()
    seen = []

    def on_change(details):
        seen.append(details.flags_changed)
        changed.set()

    backend.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    try:
        # Past pytest's output capture, on a line of its own: the driver applies the halt now.
        with capsys.disabled():
            sys.stdout.write(f"\n{READY_FOR_HALT}\n")
            sys.stdout.flush()
        assert changed.wait(EVENT_TIMEOUT_S), (
            f"no PROVIDER_CONFIGURATION_CHANGED within {EVENT_TIMEOUT_S} s of the halt"
        )
    finally:
        backend.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    assert seen[0] == [supplier.feature], seen
    assert answer(ask(backend, supplier.feature, ods)) == OFF
    # The other practices are as they were.
    assert answer(ask(backend, supplier.feature, supplier.practices["enabled"])) == ON


def test_no_client_certificate_is_refused(supplier, refused_provider):
    connected = refused_provider(supplier.provider(identity=None))
    client = connected.client
    # The supplier ends the TLS handshake, the event stream never says provider_ready:
    # start-up gives up at the deadline.
    assert isinstance(connected.error, ProviderNotReadyError), repr(connected.error)
    assert client.get_provider_status() == ProviderStatus.ERROR
    # An evaluation waits for a connection until the deadline, then gets the code default.
    details = ask(client, supplier.feature, supplier.practices["enabled"])
    assert (details.value, details.reason) == (False, Reason.ERROR), details
    assert details.error_code == ErrorCode.GENERAL, details
    assert "DEADLINE_EXCEEDED" in details.error_message, details
    assert client.get_provider_status() == ProviderStatus.ERROR
    assert connected.ready_events == []


@pytest.mark.parametrize("identity", ["practice-admin-emis", "viewer"])
def test_a_non_backend_identity_is_refused_and_fatal(supplier, refused_provider, identity):
    connected = refused_provider(
        supplier.provider(identity=identity, fatal_status_codes=["PERMISSION_DENIED"])
    )
    client = connected.client
    # The supplier refuses the event stream PERMISSION_DENIED; listed as fatal, it stops the
    # provider at once instead of leaving it retrying.
    assert isinstance(connected.error, ProviderFatalError), repr(connected.error)
    assert client.get_provider_status() == ProviderStatus.FATAL
    # The SDK answers for a fatal provider without asking it.
    details = ask(client, supplier.feature, supplier.practices["enabled"])
    assert (details.value, details.reason) == (False, Reason.ERROR), details
    assert details.error_code == ErrorCode.PROVIDER_FATAL, details
    assert connected.ready_events == []


def test_without_fatal_status_codes_a_non_backend_identity_never_becomes_ready(
    supplier, refused_provider
):
    connected = refused_provider(supplier.provider(identity="practice-admin-emis"))
    client = connected.client
    # Not fatal: start-up gives up at the deadline, and the provider keeps reopening the
    # event stream in the background.
    assert isinstance(connected.error, ProviderNotReadyError), repr(connected.error)
    assert client.get_provider_status() == ProviderStatus.ERROR
    # Evaluations still reach the supplier, which refuses them too.
    details = ask(client, supplier.feature, supplier.practices["enabled"])
    assert (details.value, details.error_code) == (False, ErrorCode.GENERAL), details
    assert "PERMISSION_DENIED" in details.error_message, details
    assert connected.ready_events == []


# `default_authority` would override the name checked, but the provider ignores it in RPC mode.
@pytest.mark.parametrize(
    "options", [{}, {"default_authority": "localhost"}], ids=["address", "default-authority"]
)
def test_the_host_must_be_a_name_in_the_suppliers_certificate(
    supplier, refused_provider, options
):
    # The supplier's certificate names `localhost`, not the address 127.0.0.1: the same
    # supplier reached by address fails the client's server name check.
    connected = refused_provider(supplier.provider(host="127.0.0.1", **options))
    assert isinstance(connected.error, ProviderNotReadyError), repr(connected.error)
    assert connected.client.get_provider_status() == ProviderStatus.ERROR
    assert connected.ready_events == []
