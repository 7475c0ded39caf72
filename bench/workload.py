"""Realistic lab events for benchmarks: OTLP requests of 1,000 events with 10 attributes each.

Each request is built once; a 12-digit request number in the resource (`bench.request`) can be
patched in place per call, so every call is distinct and its records can be counted in storage
without rebuilding 350 KB of protobuf.
"""

from __future__ import annotations

import random
import time

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from labtel.collector.otlp.records import any_value

EVENT_TYPES = [
    "action_start",
    "action_complete",
    "action_failed",
    "action_status_change",
    "workflow_start",
    "workflow_complete",
    "workflow_step_start",
    "workflow_step_complete",
    "experiment_start",
    "experiment_complete",
    "node_status_update",
    "node_error",
    "resource_allocate",
    "resource_release",
    "data_store",
    "device_io",
    "state_transition",
    "health_check",
    "lab_start",
    "log_info",
]
NODES = [
    f"{kind}_{i}"
    for kind in ("liquid_handler", "plate_reader", "robot_arm", "incubator", "centrifuge")
    for i in range(1, 11)
]
ACTIONS = ["transfer", "aspirate", "dispense", "read_absorbance", "move_plate", "incubate", "spin", "seal"]
SEVERITIES = [(9, "INFO")] * 14 + [(5, "DEBUG")] * 3 + [(13, "WARN")] * 2 + [(17, "ERROR")]
PLACEHOLDER = "000000000000"


def build_request(seed: int, records: int = 1000, start_ns: int | None = None) -> bytes:
    """One ExportLogsServiceRequest of `records` lab events from one service, serialized."""
    rnd = random.Random(seed)
    now = time.time_ns() if start_ns is None else start_ns
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    service = rnd.choice(["madsci.workcell", "madsci.node", "ot2-driver", "plate-reader-driver", "scheduler"])
    resource_logs.resource.attributes.extend(
        KeyValue(key=k, value=any_value(v))
        for k, v in {
            "bench.request": PLACEHOLDER,
            "service.name": service,
            "host.name": f"lab-pc-{rnd.randint(1, 12):02d}",
            "lab.name": "chem-lab-A",
        }.items()
    )
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "labtel.sdk"
    scope_logs.scope.version = "0.1.0"
    for i in range(records):
        record = scope_logs.log_records.add()
        record.time_unix_nano = now + i * 1_000_000
        record.observed_time_unix_nano = record.time_unix_nano + 150_000
        severity, text = rnd.choice(SEVERITIES)
        record.severity_number = severity  # type: ignore[assignment]
        record.severity_text = text
        node, action, event_type = rnd.choice(NODES), rnd.choice(ACTIONS), rnd.choice(EVENT_TYPES)
        duration = rnd.expovariate(1 / 40.0)
        record.body.string_value = f"{event_type}: {action} on {node} took {duration:.2f} s"
        record.trace_id = rnd.randbytes(16)
        record.span_id = rnd.randbytes(8)
        record.flags = 1
        attributes = {
            "lab.event.type": event_type,
            "lab.node.id": node,
            "lab.workflow.id": f"wf-{seed:04d}-{i // 50:03d}",
            "lab.experiment.id": f"exp-{seed % 97:03d}",
            "lab.run.id": f"run-{seed:04d}-{i // 200}",
            "action.name": action,
            "action.duration_ms": round(duration * 1000, 3),
            "plate.wells": rnd.choice([24, 96, 384]),
            "user.id": rnd.choice(["alice", "bob", "carol", "dave"]),
            "success": rnd.random() > 0.03,
        }
        record.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in attributes.items())
    return request.SerializeToString()


class RequestStamper:
    """Stamps a request number into a pre-built request (same length: framing is unchanged)."""

    def __init__(self, template: bytes) -> None:
        self.template = template
        self.offset = template.index(PLACEHOLDER.encode())

    def stamp(self, number: int) -> bytes:
        tag = f"{number:012d}".encode()
        return self.template[: self.offset] + tag + self.template[self.offset + len(tag) :]
