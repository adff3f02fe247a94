"""The supplier under test and OpenFeature providers connected to it.

tests/integration/openfeature/python.rs starts a supplier with a fresh dev PKI, puts its
practices in every state, and describes it in the environment variable ROLLOUT_OPENFEATURE_TEST
(JSON): where it listens (host, port), the CA (ca), the backend's certificate and key (backend),
other identities' (others, by PKI name), an ODS code per state (practices), and the feature key
(feature).
"""

import json
import os
import uuid
from dataclasses import dataclass

import grpc
import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.event import ProviderEvent

ENV = "ROLLOUT_OPENFEATURE_TEST"

# How long the provider may take to start and to answer one evaluation. The provider's default
# is 500 ms; the suite allows more so that a loaded test machine does not fail it.
DEADLINE_MS = 5000


@dataclass(frozen=True)
class Supplier:
    host: str
    port: int
    ca: bytes
    # "backend" or another identity's PKI name -> (certificate chain PEM, private key PEM)
    identities: dict
    practices: dict
    feature: str

    def credentials(self, identity=None):
        """TLS credentials trusting the dev CA, presenting `identity`'s certificate if given."""
        if identity is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca)
        chain, key = self.identities[identity]
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=key, certificate_chain=chain
        )

    def provider(self, identity="backend", host=None, **options):
        """A flagd provider in RPC mode over TLS, as `identity` (None: no client certificate)."""
        options.setdefault("deadline_ms", DEADLINE_MS)
        return FlagdProvider(
            resolver_type=ResolverType.RPC,
            host=self.host if host is None else host,
            port=self.port,
            tls=True,
            channel_credentials=self.credentials(identity),
            **options,
        )


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="session")
def supplier():
    raw = os.environ.get(ENV)
    if not raw:
        pytest.fail(
            f"{ENV} is not set: this suite is run by "
            "`cargo test -p rollout-tests --test integration -- openfeature::python`, "
            "which starts the supplier it tests",
            pytrace=False,
        )
    env = json.loads(raw)
    identities = {
        name: (_read(files["cert"]), _read(files["key"]))
        for name, files in [("backend", env["backend"]), *env["others"].items()]
    }
    return Supplier(
        host=env["host"],
        port=int(env["port"]),
        ca=_read(env["ca"]),
        identities=identities,
        practices=env["practices"],
        feature=env["feature"],
    )


@dataclass
class Connected:
    client: OpenFeatureClient
    # What the provider's start-up raised, if anything.
    error: Exception | None
    # PROVIDER_READY events seen since start-up ended (or at once, if it was then ready).
    ready_events: list


def connect(provider) -> Connected:
    """Registers `provider` under a domain of its own and waits for its start-up."""
    domain = f"test-{uuid.uuid4()}"
    error = None
    try:
        api.set_provider_and_wait(provider, domain=domain)
    except Exception as e:  # the SDK re-raises what the provider's initialize raised
        error = e
    client = api.get_client(domain=domain)
    ready_events = []
    client.add_handler(ProviderEvent.PROVIDER_READY, ready_events.append)
    return Connected(client, error, ready_events)


@pytest.fixture(scope="session")
def backend(supplier):
    """A client whose provider is connected as the supplier's backend."""
    connected = connect(supplier.provider())
    assert connected.error is None, f"the backend's provider did not start: {connected.error!r}"
    yield connected.client
    connected.client.provider.shutdown()


@pytest.fixture
def refused_provider():
    """Providers a test expects to be refused, shut down after it (they keep retrying)."""
    started = []

    def start(provider):
        started.append(provider)
        return connect(provider)

    yield start
    for provider in started:
        provider.shutdown()
