"""Configure Airbyte for Stockcast through its public API (v1): Yahoo Finance prices into Event Hubs.

Creates, or updates when one of the same name exists, in one Airbyte workspace:

- the source ``stockcast-yahoo-finance`` (source-yahoo-finance-price: the tickers, ``interval: 1m``,
  ``range: 1d``);
- the destination ``stockcast-event-hubs`` (destination-kafka: ``<namespace>.servicebus.windows.net:9093``,
  topic ``stock_bars``, SASL_SSL with PLAIN, username ``$ConnectionString``, password the hub's Send-only
  connection string);
- the connection between them, every few minutes (by default during US market hours only).

The Azure values come from ``azd env get-values`` (or ``--env-file``). The connection string is fetched
with ``az eventhubs eventhub authorization-rule keys list`` and goes straight into the destination payload:
it is never printed, logged or written to a file, and ``--dry-run`` shows the bodies with it redacted.
The Airbyte credentials come from the environment (``AIRBYTE_TOKEN``, or ``AIRBYTE_CLIENT_ID`` and
``AIRBYTE_CLIENT_SECRET``) or a prompt, never from the command line.

    .venv/bin/python bicep/hooks/airbyte.py --api-url http://localhost:8000/api/public/v1 --dry-run
"""

from __future__ import annotations

import argparse
import copy
import getpass
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_API_URL = "http://localhost:8000/api/public/v1"
DEFAULT_TICKERS = "AAPL,MSFT,NVDA,AMZN,GOOG"
SOURCE_NAME = "stockcast-yahoo-finance"
DESTINATION_NAME = "stockcast-event-hubs"
CONNECTION_NAME = "stockcast-yahoo-to-event-hubs"
# Connector definitions (airbyte-integrations/connectors/*/metadata.yaml); both are OSS connectors.
YAHOO_DEFINITION_ID = "09a517d3-803f-448d-97bf-0b1ee64b90ef"
KAFKA_DEFINITION_ID = "9f760101-60ae-462f-9ee6-b7a9dafd454d"
PRICE_STREAM = "price"
REDACTED = "***REDACTED***"
# The hook's Azure values, as bicep/main.bicep outputs them (azd env get-values).
REQUIRED_KEYS = ("AZURE_RESOURCE_GROUP", "EVENTHUBS_NAMESPACE", "EVENTHUB_SEND_RULE_NAME")
_TICKER = re.compile(r"^[A-Z0-9^][A-Z0-9.^=-]{0,15}$")
_ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_SHARED_ACCESS_KEY = re.compile(r"(SharedAccessKey=)[^;\"\s]+")


class SetupError(RuntimeError):
    """The setup cannot go on; the message says why and never contains a secret."""


@dataclass(frozen=True)
class EventHubsTarget:
    """Where Airbyte sends the bars: the Event Hubs namespace, hub and Send-only rule."""

    resource_group: str
    namespace: str
    eventhub: str
    send_rule: str
    bootstrap_server: str
    subscription_id: str | None = None

    @classmethod
    def from_env(cls, values: Mapping[str, str]) -> EventHubsTarget:
        """Build the target from azd environment values; raise SetupError naming every missing key."""
        missing = [key for key in REQUIRED_KEYS if not values.get(key)]
        if missing:
            raise SetupError("missing azd environment values: " + ", ".join(missing) + " (run 'azd provision')")
        namespace = values["EVENTHUBS_NAMESPACE"]
        return cls(
            resource_group=values["AZURE_RESOURCE_GROUP"],
            namespace=namespace,
            eventhub=values.get("EVENTHUB_NAME") or "stock_bars",
            send_rule=values["EVENTHUB_SEND_RULE_NAME"],
            bootstrap_server=values.get("EVENTHUBS_BOOTSTRAP_SERVER") or f"{namespace}.servicebus.windows.net:9093",
            subscription_id=values.get("AZURE_SUBSCRIPTION_ID") or None,
        )


def parse_env_values(text: str) -> dict[str, str]:
    """Parse ``KEY="value"`` lines as ``azd env get-values`` prints them (and .env files hold them)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line.removeprefix("export "))
        if not match:
            continue
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        values[key] = value
    return values


def azd_env_values(environment: str | None) -> dict[str, str]:
    """The values of an azd environment (the default one unless named), read with ``azd env get-values``."""
    command = ["azd", "env", "get-values", *(["--environment", environment] if environment else [])]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise SetupError("azd is not installed; pass --env-file .azure/<env>/.env instead") from exc
    if result.returncode != 0:
        raise SetupError(f"'{' '.join(command)}' failed: {result.stderr.strip()}")
    return parse_env_values(result.stdout)


def connection_string_command(target: EventHubsTarget) -> list[str]:
    """The az command that prints the hub's Send-only connection string (the one postprovision shows)."""
    command = [
        "az",
        "eventhubs",
        "eventhub",
        "authorization-rule",
        "keys",
        "list",
        "--resource-group",
        target.resource_group,
        "--namespace-name",
        target.namespace,
        "--eventhub-name",
        target.eventhub,
        "--name",
        target.send_rule,
        "--query",
        "primaryConnectionString",
        "-o",
        "tsv",
    ]
    if target.subscription_id:
        command += ["--subscription", target.subscription_id]
    return command


def fetch_connection_string(target: EventHubsTarget) -> str:
    """Run the az command and return the connection string; errors never include it."""
    try:
        result = subprocess.run(connection_string_command(target), capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise SetupError("the Azure CLI (az) is not installed") from exc
    if result.returncode != 0:
        raise SetupError(f"az could not list the keys of rule {target.send_rule}: {result.stderr.strip()}")
    value = result.stdout.strip()
    if not value.startswith("Endpoint=sb://") or '"' in value or "\n" in value:
        raise SetupError(f"az did not return a connection string for rule {target.send_rule}")
    return value


def parse_tickers(raw: str) -> list[str]:
    """Upper-case, de-duplicated Yahoo tickers from a comma-separated list; raise ValueError on a bad one."""
    tickers: list[str] = []
    for part in raw.split(","):
        ticker = part.strip().upper()
        if not ticker:
            continue
        if not _TICKER.match(ticker):
            raise ValueError(f"not a Yahoo ticker: {part.strip()!r}")
        if ticker not in tickers:
            tickers.append(ticker)
    if not tickers:
        raise ValueError("no tickers given")
    return tickers


def cron_expression(every_minutes: int, market_hours_only: bool = True) -> str:
    """Airbyte's (Quartz) cron for a sync every N minutes, by default 09:00-16:55 New York, Monday-Friday."""
    if not 1 <= every_minutes <= 59:
        raise ValueError("every_minutes must be between 1 and 59")
    if market_hours_only:
        return f"0 */{every_minutes} 9-16 ? * MON-FRI"
    return f"0 */{every_minutes} * * * ?"


def jaas_config(connection_string: str) -> str:
    """The SASL JAAS line Event Hubs' Kafka endpoint expects: user ``$ConnectionString``, password the string."""
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="$ConnectionString" password="{connection_string}";'
    )


def source_body(workspace_id: str, tickers: Sequence[str], name: str = SOURCE_NAME) -> dict[str, Any]:
    """``POST /sources``: source-yahoo-finance-price, one-minute bars of the current day."""
    return {
        "name": name,
        "workspaceId": workspace_id,
        "definitionId": YAHOO_DEFINITION_ID,
        "configuration": {
            "sourceType": "yahoo-finance-price",
            "tickers": ",".join(tickers),
            "interval": "1m",
            "range": "1d",
        },
    }


def destination_body(
    workspace_id: str, target: EventHubsTarget, connection_string: str, name: str = DESTINATION_NAME
) -> dict[str, Any]:
    """``POST /destinations``: destination-kafka pointed at the Event Hubs Kafka endpoint."""
    return {
        "name": name,
        "workspaceId": workspace_id,
        "definitionId": KAFKA_DEFINITION_ID,
        "configuration": {
            "bootstrap_servers": target.bootstrap_server,
            "topic_pattern": target.eventhub,
            # The connection check writes one test-topic-stream record here; ingest ignores that stream.
            "test_topic": target.eventhub,
            "sync_producer": False,
            "protocol": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_jaas_config": jaas_config(connection_string),
            },
            "client_id": "airbyte-stockcast",
            "acks": "all",
            "enable_idempotence": False,
            "compression_type": "none",
            "batch_size": 16384,
            "linger_ms": "0",
            "max_in_flight_requests_per_connection": 5,
            "client_dns_lookup": "use_all_dns_ips",
            "buffer_memory": "33554432",
            # Event Hubs Standard takes events up to 1 MB; Event Hubs asks for request timeouts >= 60 s.
            "max_request_size": 1000000,
            "retries": 2147483647,
            "socket_connection_setup_timeout_ms": "10000",
            "socket_connection_setup_timeout_max_ms": "30000",
            "max_block_ms": "60000",
            "request_timeout_ms": 60000,
            "delivery_timeout_ms": 120000,
            "send_buffer_bytes": 131072,
            "receive_buffer_bytes": 32768,
        },
    }


def connection_body(
    source_id: str | None,
    destination_id: str | None,
    cron: str,
    time_zone: str = "America/New_York",
    name: str = CONNECTION_NAME,
) -> dict[str, Any]:
    """``POST /connections`` (with the ids) or ``PATCH /connections/{id}`` (ids None): the sync schedule."""
    body: dict[str, Any] = {
        "name": name,
        "schedule": {"scheduleType": "cron", "cronExpression": cron, "cronTimeZone": time_zone},
        "namespaceDefinition": "destination",
        "nonBreakingSchemaUpdatesBehavior": "ignore",
        # destination-kafka only appends; every sync re-sends the day so far, and ingest keeps the newest bar.
        "configurations": {"streams": [{"name": PRICE_STREAM, "syncMode": "full_refresh_append"}]},
        "status": "active",
    }
    if source_id is not None and destination_id is not None:
        body = {"sourceId": source_id, "destinationId": destination_id, **body}
    return body


def redact(value: Any, secrets: Sequence[str]) -> Any:
    """A deep copy of ``value`` with every secret (and any SharedAccessKey=...) replaced by a marker."""
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, REDACTED)
        return _SHARED_ACCESS_KEY.sub(rf"\1{REDACTED}", value)
    if isinstance(value, Mapping):
        return {key: redact(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item, secrets) for item in value]
    return copy.deepcopy(value)


# --- Airbyte API -------------------------------------------------------------------------------------------

_ID_KEYS = {"sources": "sourceId", "destinations": "destinationId", "connections": "connectionId"}


class AirbyteClient:
    """A small client for the Airbyte public API (v1): list, create and patch by name."""

    def __init__(self, api_url: str, token: str, secrets: Sequence[str] = (), transport: Any = None) -> None:
        self.secrets = tuple(secrets)
        self.http = httpx.Client(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(60.0, connect=10.0),
            transport=transport,
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            detail = redact(response.text[:2000], self.secrets)
            raise SetupError(f"Airbyte API {method} {path} answered {response.status_code}: {detail}")
        return response.json() if response.content else None

    def workspace_ids(self) -> list[str]:
        """The ids of the workspaces this token can see."""
        return [item["workspaceId"] for item in self._list("/workspaces", {})]

    def _list(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        offset, limit = 0, 100
        while True:
            page = self._call("GET", path, params={**params, "limit": limit, "offset": offset}) or {}
            data = page.get("data", [])
            items.extend(data)
            if len(data) < limit:
                return items
            offset += limit

    def find(self, kind: str, workspace_id: str, name: str) -> str | None:
        """The id of the source/destination/connection called ``name`` in the workspace, if any."""
        for item in self._list(f"/{kind}", {"workspaceIds": workspace_id}):
            if item.get("name") == name:
                return str(item[_ID_KEYS[kind]])
        return None

    def upsert(self, kind: str, workspace_id: str, create: dict[str, Any], patch: dict[str, Any]) -> tuple[str, str]:
        """Patch the item of the same name, or create it; return (id, "created" | "updated")."""
        existing = self.find(kind, workspace_id, create["name"])
        if existing is not None:
            self._call("PATCH", f"/{kind}/{existing}", json=patch)
            return existing, "updated"
        created = self._call("POST", f"/{kind}", json=create)
        return str(created[_ID_KEYS[kind]]), "created"


def access_token(
    api_url: str,
    environ: Mapping[str, str],
    prompt: Callable[[str], str] = getpass.getpass,
    transport: Any = None,
) -> str:
    """A bearer token: AIRBYTE_TOKEN, or one exchanged for AIRBYTE_CLIENT_ID/AIRBYTE_CLIENT_SECRET (prompted)."""
    if environ.get("AIRBYTE_TOKEN"):
        return environ["AIRBYTE_TOKEN"]
    client_id = environ.get("AIRBYTE_CLIENT_ID") or prompt("Airbyte client id: ").strip()
    client_secret = environ.get("AIRBYTE_CLIENT_SECRET") or prompt("Airbyte client secret: ").strip()
    if not client_id or not client_secret:
        raise SetupError("no Airbyte credentials: set AIRBYTE_TOKEN, or AIRBYTE_CLIENT_ID and AIRBYTE_CLIENT_SECRET")
    with httpx.Client(base_url=api_url.rstrip("/"), timeout=30.0, transport=transport) as http:
        response = http.post(
            "/applications/token",
            json={"client_id": client_id, "client_secret": client_secret, "grant-type": "client_credentials"},
        )
    if response.status_code >= 400:
        raise SetupError(f"Airbyte refused the client credentials ({response.status_code})")
    return str(response.json()["access_token"])


def apply(
    client: AirbyteClient,
    workspace_id: str,
    tickers: Sequence[str],
    target: EventHubsTarget,
    connection_string: str,
    cron: str,
) -> dict[str, tuple[str, str]]:
    """Create or update the source, the destination and the connection; return their ids and actions."""
    source = source_body(workspace_id, tickers)
    destination = destination_body(workspace_id, target, connection_string)
    done: dict[str, tuple[str, str]] = {}
    done["source"] = client.upsert(
        "sources", workspace_id, source, {"name": source["name"], "configuration": source["configuration"]}
    )
    done["destination"] = client.upsert(
        "destinations",
        workspace_id,
        destination,
        {"name": destination["name"], "configuration": destination["configuration"]},
    )
    done["connection"] = client.upsert(
        "connections",
        workspace_id,
        connection_body(done["source"][0], done["destination"][0], cron),
        connection_body(None, None, cron),
    )
    return done


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--api-url",
        default=os.environ.get("AIRBYTE_API_URL", DEFAULT_API_URL),
        help=f"Airbyte public API base URL (AIRBYTE_API_URL; default {DEFAULT_API_URL}, abctl's)",
    )
    parser.add_argument(
        "--workspace-id",
        default=os.environ.get("AIRBYTE_WORKSPACE_ID"),
        help="Airbyte workspace (AIRBYTE_WORKSPACE_ID; default: the only one the token sees)",
    )
    parser.add_argument("--tickers", default=DEFAULT_TICKERS, help="comma-separated Yahoo tickers")
    parser.add_argument("--every-minutes", type=int, default=5, help="minutes between syncs")
    parser.add_argument("--all-hours", action="store_true", help="sync around the clock, not only market hours")
    parser.add_argument("--environment", "-e", help="azd environment (default: the default one)")
    parser.add_argument("--env-file", type=Path, help='read KEY="value" lines from this file instead of azd')
    parser.add_argument("--dry-run", action="store_true", help="print the request bodies (secret redacted)")
    return parser


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the setup; return the process exit status."""
    args = _parser().parse_args(argv)
    try:
        tickers = parse_tickers(args.tickers)
        cron = cron_expression(args.every_minutes, market_hours_only=not args.all_hours)
        values = parse_env_values(args.env_file.read_text()) if args.env_file else azd_env_values(args.environment)
        target = EventHubsTarget.from_env(values)
        connection_string = fetch_connection_string(target)
        secrets = (connection_string,)
        if args.dry_run:
            workspace_id = args.workspace_id or "<workspaceId>"
            bodies = {
                "POST /sources": source_body(workspace_id, tickers),
                "POST /destinations": destination_body(workspace_id, target, connection_string),
                "POST /connections": connection_body("<sourceId>", "<destinationId>", cron),
            }
            _write(json.dumps(redact(bodies, secrets), indent=2))
            return 0
        client = AirbyteClient(args.api_url, access_token(args.api_url, os.environ), secrets)
        try:
            workspace_id = args.workspace_id
            if not workspace_id:
                workspaces = client.workspace_ids()
                if len(workspaces) != 1:
                    raise SetupError(f"{len(workspaces)} Airbyte workspaces: pass --workspace-id")
                workspace_id = workspaces[0]
            done = apply(client, workspace_id, tickers, target, connection_string, cron)
        finally:
            client.close()
    except (SetupError, ValueError, OSError, httpx.HTTPError) as exc:
        sys.stderr.write(f"airbyte: {exc}\n")
        return 1
    for kind, (item_id, action) in done.items():
        _write(f"{kind:<12} {item_id}  {action}")
    _write(f"syncs {','.join(tickers)} to {target.bootstrap_server} topic {target.eventhub} on '{cron}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
