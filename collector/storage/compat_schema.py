"""Tables of the compatibility routes (MADSci archive, PANOPTES current view, runs and sequence
numbers). Created by migrations; each function returns one migration's statements."""

from __future__ import annotations

from labtel.collector.storage.schema import SchemaNames

MADSCI_ARCHIVE = "labtel_madsci_archive"
PANOPTES_CURRENT = "labtel_panoptes_current"
PANOPTES_RUNS = "labtel_panoptes_runs"
PANOPTES_SEQ = "labtel_panoptes_seq"


def madsci_tables(names: SchemaNames) -> list[str]:
    """MADSci's soft delete: which events are archived, and since when (events stay in otel_logs)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {names.qualified(MADSCI_ARCHIVE)}{names.on_cluster} (
    EventId UUID,
    ArchivedAt DateTime64(3, 'UTC')
) ENGINE = {names.topology.engine("ReplacingMergeTree", "ArchivedAt", state=True)}
ORDER BY EventId"""
    ]


def panoptes_tables(names: SchemaNames) -> list[str]:
    """PANOPTES telemetry: the latest envelope per stream, run and type (`/current`), the runs
    (one active at a time, kept across restarts), and the reserved sequence numbers per stream."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {names.qualified(PANOPTES_CURRENT)}{names.on_cluster} (
    Stream LowCardinality(String),
    RunKey String,
    Type String,
    Seq UInt64,
    Envelope String CODEC(ZSTD(1)),
    UpdatedAt DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = {names.topology.engine("ReplacingMergeTree", "Seq", state=True)}
ORDER BY (Stream, RunKey, Type)""",
        f"""CREATE TABLE IF NOT EXISTS {names.qualified(PANOPTES_RUNS)}{names.on_cluster} (
    RunKey String,
    RunId String,
    RunDir String,
    Meta String,
    StartedAt String,
    Stopped UInt8,
    Version UInt64
) ENGINE = {names.topology.engine("ReplacingMergeTree", "Version", state=True)}
ORDER BY RunKey""",
        f"""CREATE TABLE IF NOT EXISTS {names.qualified(PANOPTES_SEQ)}{names.on_cluster} (
    Stream LowCardinality(String),
    Reserved UInt64
) ENGINE = {names.topology.engine("ReplacingMergeTree", "Reserved", state=True)}
ORDER BY Stream""",
    ]
