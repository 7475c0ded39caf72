"""otel-config.yaml: the Collector's format, env substitution, and clear errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from labtel.collector.config import ClickHouseExporterConfig, ConfigError, expand_env, load_config, parse_config
from labtel.collector.durations import parse_duration

REPO = Path(__file__).resolve().parents[1]


def minimal(**overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "receivers": {"otlp": {"protocols": {"grpc": None, "http": {"endpoint": "localhost:4318"}}}},
        "processors": {"batch": {"timeout": "100ms"}},
        "exporters": {"clickhouse": {"endpoint": "chdb://./data"}},
        "service": {
            "pipelines": {"logs": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["clickhouse"]}}
        },
    }
    config.update(overrides)
    return config


def test_the_shipped_config_loads_with_its_defaults() -> None:
    config = load_config(REPO / "otel-config.yaml", environ={})
    grpc = config.receivers["otlp"].protocols.grpc
    assert grpc is not None
    assert grpc.port == 4317
    assert config.receivers["otlp"].protocols.http.port == 4318  # type: ignore[union-attr]
    assert config.extensions["query_api"].port == 8000
    exporter = config.exporters["clickhouse"]
    assert exporter.endpoint == "chdb://./labtel-data"
    assert exporter.database == "otel"
    assert exporter.ttl == timedelta(0)
    assert set(config.service.pipelines) == {"logs", "traces", "metrics"}
    assert exporter.metrics_tables.by_type()["exponential_histogram"] == "otel_metrics_exponential_histogram"


def test_env_substitution_with_defaults_and_types() -> None:
    env = {"PORT": "4999", "DB": "lab", "EMPTY": ""}
    assert expand_env("${env:DB}", env) == "lab"
    assert expand_env("${env:MISSING:-fallback}", env) == "fallback"
    assert expand_env("${env:EMPTY:-fallback}", env) == "fallback"
    assert expand_env("${DB}", env) == "lab"
    assert expand_env("${env:PORT}", env) == "4999"  # the text as is; the field's validation types it
    assert expand_env("localhost:${env:PORT}", env) == "localhost:4999"
    assert expand_env("cost: $$5", env) == "cost: $5"
    assert expand_env({"a": ["${env:DB}"]}, env) == {"a": ["lab"]}
    config = load_config(
        REPO / "otel-config.yaml",
        environ={"LABTEL_GRPC_ENDPOINT": "0.0.0.0:5317", "LABTEL_CLICKHOUSE_DATABASE": "observatory"},
    )
    assert config.receivers["otlp"].protocols.grpc.endpoint == "0.0.0.0:5317"  # type: ignore[union-attr]
    assert config.exporters["clickhouse"].database == "observatory"


@pytest.mark.parametrize(
    "secret", ["12345", "007", "on", "yes", "12:30", "0x1F", "pa ss #1", "'quoted'", "&anc secret", "[a, b]", "~"]
)
def test_env_values_reach_string_fields_exactly_as_written(secret: str) -> None:
    config = load_config(
        REPO / "otel-config.yaml",
        environ={"LABTEL_CLICKHOUSE_PASSWORD": secret, "LABTEL_CLICKHOUSE_USER": secret},
    )
    exporter = config.exporters["clickhouse"]
    assert exporter.password.get_secret_value() == secret
    assert exporter.username == secret


def test_env_values_are_typed_by_numeric_and_boolean_fields(tmp_path: Path) -> None:
    config = minimal()
    config["exporters"] = {
        "clickhouse": {
            "endpoint": "chdb://./data",
            "database": "${env:DB}",
            "async_insert": "${env:ASYNC}",
            "sending_queue": {"num_consumers": "${env:CONSUMERS}"},
        }
    }
    path = tmp_path / "otel-config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path, environ={"DB": "2024", "ASYNC": "off", "CONSUMERS": "3"})
    exporter = loaded.exporters["clickhouse"]
    assert exporter.database == "2024"
    assert exporter.async_insert is False
    assert exporter.sending_queue.num_consumers == 3
    with pytest.raises(ConfigError, match=r"exporters\.clickhouse\.sending_queue\.num_consumers"):
        load_config(path, environ={"DB": "x", "ASYNC": "on", "CONSUMERS": "many"})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${env:LABTEL_NOT_SET}", "exporters.clickhouse.password: the environment variable LABTEL_NOT_SET is not set"),
        ("x${env:LABTEL_NOT_SET}", "the environment variable LABTEL_NOT_SET is not set"),
        (
            "${file:/run/secrets/pw}",
            "exporters.clickhouse.password: '${file:/run/secrets/pw}' uses the provider 'file'",
        ),
    ],
)
def test_unset_variables_and_other_providers_are_named(value: str, message: str) -> None:
    config = minimal()
    config["exporters"] = {"clickhouse": {"password": value}}
    with pytest.raises(ConfigError) as caught:
        parse_config(expand_env(config, {}))
    assert message in str(caught.value)
    assert expand_env("$${file:x} ${env:LABTEL_NOT_SET:-}", {}) == "${file:x} "


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"exporters": {"kafka": {}}}, "exporters.kafka: unknown exporter type 'kafka'"),
        (
            {"receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "localhost:99999"}}}}},
            "receivers.otlp.protocols.grpc.endpoint: endpoint 'localhost:99999' has a bad port 99999",
        ),
        (
            {"receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "localhost:http"}}}}},
            "has a bad port 'http'",
        ),
        (
            {"receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "localhost:\u00b2"}}}}},
            "has a bad port '\u00b2'",
        ),
        ({"receivers": {"otlp": {"protocols": {}}}}, "receivers.otlp.protocols: enable at least one"),
        ({"service": {}}, "service.pipelines: missing"),
        (
            {"service": {"pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["nope"]}}}},
            "service.pipelines.logs.exporters: 'nope' is not defined under 'exporters'",
        ),
        (
            {"service": {"pipelines": {"profiles": {"receivers": ["otlp"], "exporters": ["clickhouse"]}}}},
            "service.pipelines.profiles: unknown signal 'profiles'",
        ),
        ({"processors": {"batch": {"timeout": "soon"}}}, "processors.batch.timeout: invalid duration 'soon'"),
        ({"processors": {"batch": {"tiemout": "1s"}}}, "processors.batch.tiemout: unknown key"),
        (
            {"exporters": {"clickhouse": {"endpoint": "mysql://x"}}},
            "exporters.clickhouse.endpoint: endpoint 'mysql://x'",
        ),
        ({"exporters": {"clickhouse": {"ttl": "forever"}}}, "exporters.clickhouse.ttl: invalid duration"),
        (
            {"exporters": {"clickhouse": {"database": "a b"}}},
            "exporters.clickhouse.database: 'a b' is not a usable",
        ),
        (
            {
                "extensions": {"query_api": {"endpoint": "localhost:4318"}},
                "service": {
                    "extensions": ["query_api"],
                    "pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["clickhouse"]}},
                },
            },
            "extensions.query_api.endpoint: port 4318 is already used by receivers.otlp.protocols.http",
        ),
        ({"exporters_typo": {}}, "exporters_typo: unknown top-level section"),
        (
            {"exporters": {"clickhouse": {"sending_queue": {"enabled": False}}}},
            "exporters.clickhouse.sending_queue.enabled: labtel's queue cannot be turned off",
        ),
        (
            {"exporters": {"clickhouse": {"retry_on_failure": {"enabled": "false"}}}},
            "exporters.clickhouse.retry_on_failure.enabled: labtel's retries cannot be turned off",
        ),
        (
            {"exporters": {"clickhouse": {"retry_on_failure": {"max_elapsed_time": "300s"}}}},
            "exporters.clickhouse.retry_on_failure.max_elapsed_time: labtel never drops an acknowledged batch",
        ),
        (
            {"extensions": {"query_api": {"storage": "clickhouse/archive"}}},
            "extensions.query_api.storage: 'clickhouse/archive' is not a clickhouse exporter under 'exporters'",
        ),
    ],
)
def test_bad_configs_are_rejected_with_the_key_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(**change))
    assert message in str(caught.value)


def test_the_contrib_exporters_queue_and_retry_switches_are_accepted_as_labtel_behaves() -> None:
    queue = {"enabled": True, "queue_size": 1000}
    retry = {"enabled": True, "initial_interval": "5s", "max_interval": "30s", "max_elapsed_time": "0s"}
    exporter = {"endpoint": "chdb://./data", "sending_queue": queue, "retry_on_failure": retry, "async_insert": True}
    config = parse_config(minimal(exporters={"clickhouse": exporter}))
    assert config.exporters["clickhouse"].retry_on_failure.initial_interval == timedelta(seconds=5)  # type: ignore[union-attr]
    assert config.exporters["clickhouse"].sending_queue.queue_size == 1000  # type: ignore[union-attr]


def test_empty_protocol_means_defaults_and_names_are_typed() -> None:
    config = parse_config(minimal())
    assert config.receivers["otlp"].protocols.grpc.endpoint == "localhost:4317"  # type: ignore[union-attr]
    assert config.processors["batch"].timeout == timedelta(milliseconds=100)
    named = minimal(exporters={"clickhouse/archive": {"endpoint": "http://ch:8123", "logs_ttl": "720h"}})
    named["service"] = {"pipelines": {"logs/2": {"receivers": ["otlp"], "exporters": ["clickhouse/archive"]}}}
    config = parse_config(named)
    assert config.exporters["clickhouse/archive"].signal_ttl("logs") == timedelta(days=30)
    assert config.exporters["clickhouse/archive"].signal_ttl("traces") == timedelta(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200ms", timedelta(milliseconds=200)),
        ("1h30m", timedelta(minutes=90)),
        ("30d", timedelta(days=30)),
        ("1.5s", timedelta(seconds=1.5)),
        (0, timedelta(0)),
        ("0", timedelta(0)),
    ],
)
def test_durations(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["5", 5, "5 s", "-1s", "1x", "s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def _cli(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    """`labtel <command> --config <config>` run to its end (a configuration error ends it at once)."""
    return subprocess.run(
        [sys.executable, "-m", "labtel.cli", command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_refuses_a_bad_config_at_start_up(tmp_path: Path) -> None:
    bad = minimal(exporters={"clikhouse": {}})
    path = tmp_path / "otel-config.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = _cli("serve", path)
    assert result.returncode == 2
    assert "exporters.clikhouse: unknown exporter type 'clikhouse'" in " ".join(result.stderr.split())


def test_cli_api_names_a_query_api_without_storage(tmp_path: Path) -> None:
    """`labtel api` reads the query_api extension's storage: one it does not name is a
    configuration error at start-up (it was a traceback from `labtel api`)."""
    path = tmp_path / "otel-config.yaml"
    config = minimal(extensions={"query_api": {"endpoint": "127.0.0.1:0", "storage": "clickhouse/nope"}})
    path.write_text(yaml.safe_dump(config))
    result = _cli("api", path)
    assert result.returncode == 2, result.stderr
    assert "extensions.query_api.storage: 'clickhouse/nope' is not a clickhouse exporter" in " ".join(
        result.stderr.split()
    )
    assert "Traceback" not in result.stderr


def test_data_dir_keeps_the_embedded_engine_options(tmp_path: Path) -> None:
    """`--data-dir` moves the embedded store; the engine options of the configured chdb://
    endpoint (a memory cap) still apply to it."""
    from labtel.cli import _load

    config = minimal(exporters={"clickhouse": {"endpoint": "chdb://./data?max_server_memory_usage=900000000"}})
    path = tmp_path / "otel-config.yaml"
    path.write_text(yaml.safe_dump(config))
    _, loaded = _load(path, tmp_path / "elsewhere")
    assert loaded.exporters["clickhouse"].endpoint == (
        f"chdb://{(tmp_path / 'elsewhere').resolve()}?max_server_memory_usage=900000000"
    )
    server = minimal(exporters={"clickhouse": {"endpoint": "http://ch:8123/?session_timeout=5"}})
    path.write_text(yaml.safe_dump(server))
    _, loaded = _load(path, tmp_path / "elsewhere")
    assert loaded.exporters["clickhouse"].endpoint == f"chdb://{(tmp_path / 'elsewhere').resolve()}"


def test_cli_reports_a_missing_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "otel-config.yaml"
    path.write_text(yaml.safe_dump(minimal(service={"extensions": []})))
    result = _cli("collector", path)
    assert result.returncode == 2
    assert "service.pipelines: missing" in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("telemetry", "message"),
    [
        ({"metrics": {"interval": "banana"}}, "service.telemetry.metrics.interval: invalid duration 'banana'"),
        ({"metrics": {"intervall": "1s"}}, "service.telemetry.metrics.intervall: unknown key"),
        ({"metrics": {"level": "nonsense"}}, "service.telemetry.metrics.level: Input should be 'none', 'basic'"),
        ({"metrics": {"interval": "100ms"}}, "service.telemetry.metrics.interval: the interval must be at least 1s"),
        ({"logs": {"level": "loud"}}, "service.telemetry.logs.level: Input should be 'debug'"),
        ({"traces": {}}, "service.telemetry.traces: unknown key"),
    ],
)
def test_service_telemetry_is_checked_like_the_rest(telemetry: dict[str, object], message: str) -> None:
    service = {"telemetry": telemetry, "pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["clickhouse"]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(service=service))
    assert message in str(caught.value)


def test_service_telemetry_is_typed() -> None:
    pipelines = {"logs": {"receivers": ["otlp"], "exporters": ["clickhouse"]}}
    telemetry = {"logs": {"level": "WARN"}, "metrics": {"level": "None", "interval": "30s"}}
    config = parse_config(minimal(service={"telemetry": telemetry, "pipelines": pipelines}))
    assert config.service.telemetry.logs.level == "warn"
    assert (config.service.telemetry.metrics.level, config.service.telemetry.metrics.interval) == (
        "none",
        timedelta(seconds=30),
    )
    defaults = parse_config(minimal(service={"telemetry": {"metrics": None}, "pipelines": pipelines}))
    assert defaults.service.telemetry.metrics.interval == timedelta(seconds=15)


def test_the_failover_order_lists_each_server_once() -> None:
    """`endpoints` may list every node, `endpoint` among them: each is tried once, the preferred first."""
    exporter = ClickHouseExporterConfig(
        endpoint="http://ch-s2-r1:8123",
        endpoints=["http://ch-s1-r1:8123", "http://CH-S2-R1:8123/", "http://ch-s1-r2:8123", "http://ch-s1-r1:8123"],
    )
    assert exporter.failover_order() == ["http://ch-s2-r1:8123", "http://ch-s1-r1:8123", "http://ch-s1-r2:8123"]
