"""Attribute names labtel reads and writes: OpenTelemetry semantic conventions where one
exists, and a `lab.` prefix for lab concepts. The storage derives its lab columns from these."""

from __future__ import annotations

from typing import Final

SERVICE_NAME: Final = "service.name"
HOST_NAME: Final = "host.name"
EVENT_NAME: Final = "event.name"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"

LAB_NAME: Final = "lab.name"
LAB_EVENT_ID: Final = "lab.event.id"
LAB_EVENT_TYPE: Final = "lab.event.type"
LAB_NODE_ID: Final = "lab.node.id"
LAB_RUN_ID: Final = "lab.run.id"
LAB_WORKFLOW_ID: Final = "lab.workflow.id"
LAB_EXPERIMENT_ID: Final = "lab.experiment.id"
LAB_USER_ID: Final = "lab.user.id"
LAB_CAMPAIGN_ID: Final = "lab.campaign.id"
LAB_PROJECT_ID: Final = "lab.project.id"
LAB_WORKCELL_ID: Final = "lab.workcell.id"
LAB_STEP_ID: Final = "lab.step.id"
LAB_MANAGER_ID: Final = "lab.manager.id"
LAB_QUEUE_ID: Final = "lab.queue.id"
LAB_DEVICE: Final = "lab.device"
LAB_DEVICE_OPERATION: Final = "lab.device.operation"
LAB_TTL_SECONDS: Final = "lab.ttl_seconds"
"""Seconds after its timestamp at which an event expires (storage deletes it)."""
LAB_EXPIRES_AT: Final = "lab.expires_at"
"""When an event expires: RFC 3339 or epoch seconds."""

LAB_COLUMNS: Final[dict[str, str]] = {
    "EventType": LAB_EVENT_TYPE,
    "NodeId": LAB_NODE_ID,
    "RunId": LAB_RUN_ID,
    "WorkflowId": LAB_WORKFLOW_ID,
    "ExperimentId": LAB_EXPERIMENT_ID,
}
"""Storage column → the attribute it is derived from (log attribute first, then resource)."""

LAB_STATUS: Final = "status"
"""An action's status (MADSci's `status`; its workcell engine says `action_status`)."""
LAB_ACTION_ID: Final = "lab.action.id"
DURATION_MS: Final = "duration_ms"

UTILIZATION_COLUMNS: Final[dict[str, tuple[tuple[str, ...], bool]]] = {
    "WorkcellId": ((LAB_WORKCELL_ID,), True),
    "UserId": ((LAB_USER_ID,), True),
    "LabName": ((LAB_NAME,), True),
    "ActionId": ((LAB_ACTION_ID, "action_id"), False),
    "ActionStatus": ((LAB_STATUS, "action_status"), False),
}
"""Storage columns utilization reads (migration 6) → (the attributes they come from, first found
wins; whether the resource's attributes count too, after the record's). `DurationMs` holds
`duration_ms`."""

FIELD_ALIASES: Final[dict[str, str]] = {
    "event_type": LAB_EVENT_TYPE,
    "event_id": LAB_EVENT_ID,
    "node_id": LAB_NODE_ID,
    "run_id": LAB_RUN_ID,
    "workflow_id": LAB_WORKFLOW_ID,
    "experiment_id": LAB_EXPERIMENT_ID,
    "user_id": LAB_USER_ID,
    "campaign_id": LAB_CAMPAIGN_ID,
    "project_id": LAB_PROJECT_ID,
    "workcell_id": LAB_WORKCELL_ID,
    "step_id": LAB_STEP_ID,
    "manager_id": LAB_MANAGER_ID,
    "queue_id": LAB_QUEUE_ID,
    "ttl_seconds": LAB_TTL_SECONDS,
    "expires_at": LAB_EXPIRES_AT,
}
"""Short keyword names lab code passes (`workflow_id=...`) → the attribute they are stored as."""
