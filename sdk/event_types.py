"""The catalog of lab event types: MADSci's 63 event types and Pychron's telemetry and lifecycle
types. Parsed case-insensitively; any other string is a valid event type too."""

from __future__ import annotations

from enum import Enum, StrEnum


class LabEventType(StrEnum):
    """A kind of lab event, stored as `lab.event.type` (and the OTel event name)."""

    # MADSci: generic and log
    UNKNOWN = "unknown"
    LOG = "log"
    LOG_DEBUG = "log_debug"
    LOG_INFO = "log_info"
    LOG_WARNING = "log_warning"
    LOG_ERROR = "log_error"
    LOG_CRITICAL = "log_critical"
    TEST = "test"
    # MADSci: lab
    LAB_CREATE = "lab_create"
    LAB_START = "lab_start"
    LAB_STOP = "lab_stop"
    # MADSci: node
    NODE_CREATE = "node_create"
    NODE_START = "node_start"
    NODE_STOP = "node_stop"
    NODE_CONFIG_UPDATE = "node_config_update"
    NODE_STATUS_UPDATE = "node_status_update"
    NODE_ERROR = "node_error"
    # MADSci: workcell
    WORKCELL_CREATE = "workcell_create"
    WORKCELL_START = "workcell_start"
    WORKCELL_STOP = "workcell_stop"
    WORKCELL_CONFIG_UPDATE = "workcell_config_update"
    WORKCELL_STATUS_UPDATE = "workcell_status_update"
    # MADSci: workflow
    WORKFLOW_CREATE = "workflow_create"
    WORKFLOW_START = "workflow_start"
    WORKFLOW_COMPLETE = "workflow_complete"
    WORKFLOW_ABORT = "workflow_abort"
    WORKFLOW_STEP_START = "workflow_step_start"
    WORKFLOW_STEP_COMPLETE = "workflow_step_complete"
    WORKFLOW_STEP_FAILED = "workflow_step_failed"
    # MADSci: experiment
    EXPERIMENT_CREATE = "experiment_create"
    EXPERIMENT_START = "experiment_start"
    EXPERIMENT_COMPLETE = "experiment_complete"
    EXPERIMENT_FAILED = "experiment_failed"
    EXPERIMENT_CANCELLED = "experiment_cancelled"
    EXPERIMENT_PAUSE = "experiment_pause"
    EXPERIMENT_CONTINUED = "experiment_continued"
    # MADSci: campaign
    CAMPAIGN_CREATE = "campaign_create"
    CAMPAIGN_START = "campaign_start"
    CAMPAIGN_COMPLETE = "campaign_complete"
    CAMPAIGN_ABORT = "campaign_abort"
    # MADSci: action
    ACTION_STATUS_CHANGE = "action_status_change"
    ACTION_START = "action_start"
    ACTION_COMPLETE = "action_complete"
    ACTION_FAILED = "action_failed"
    # MADSci: resource
    RESOURCE_CREATE = "resource_create"
    RESOURCE_UPDATE = "resource_update"
    RESOURCE_DELETE = "resource_delete"
    RESOURCE_ALLOCATE = "resource_allocate"
    RESOURCE_RELEASE = "resource_release"
    # MADSci: location and attachment
    LOCATION_CREATE = "location_create"
    LOCATION_UPDATE = "location_update"
    LOCATION_DELETE = "location_delete"
    ATTACHMENT_CREATE = "attachment_create"
    ATTACHMENT_DELETE = "attachment_delete"
    # MADSci: data
    DATA_STORE = "data_store"
    DATA_QUERY = "data_query"
    DATA_EXPORT = "data_export"
    # MADSci: manager
    MANAGER_START = "manager_start"
    MANAGER_STOP = "manager_stop"
    MANAGER_ERROR = "manager_error"
    MANAGER_HEALTH_CHECK = "manager_health_check"
    # MADSci: backup
    BACKUP_CREATE = "backup_create"
    BACKUP_RESTORE = "backup_restore"
    # Pychron telemetry
    STATE_TRANSITION = "state_transition"
    SPAN_START = "span_start"
    SPAN_END = "span_end"
    DEVICE_IO = "device_io"
    HEALTH_CHECK = "health_check"
    HEALTH_CHECK_FAILED = "health_check_failed"
    # Pychron experiment lifecycle and PANOPTES runs
    QUEUE_START = "queue_start"
    QUEUE_COMPLETE = "queue_complete"
    RUN_START = "run_start"
    RUN_COMPLETE = "run_complete"
    RUN_FAIL = "run_fail"
    RUN_CANCEL = "run_cancel"
    PHASE_START = "phase_start"
    PHASE_COMPLETE = "phase_complete"
    ANALYSIS_COMPLETE = "analysis_complete"

    @classmethod
    def _missing_(cls, value: object) -> LabEventType | None:
        if isinstance(value, str):
            wanted = value.strip().lower().replace("-", "_").replace(".", "_")
            for member in cls:
                if member.value == wanted:
                    return member
        return None

    @property
    def description(self) -> str:
        """What the event type means, for catalogs and UIs."""
        return _DESCRIPTIONS.get(self, self.value.replace("_", " "))


MADSCI_EVENT_TYPES: tuple[LabEventType, ...] = tuple(LabEventType)[
    : list(LabEventType).index(LabEventType.STATE_TRANSITION)
]
"""The 63 event types of MADSci's EventType."""


def event_type_value(value: object) -> str:
    """The stored form of an event type: a catalog member's value, else the string (an Enum
    member's value) lower-cased."""
    if isinstance(value, LabEventType):
        return value.value
    text = str(value.value if isinstance(value, Enum) else value)
    try:
        return LabEventType(text).value
    except ValueError:
        return text.strip().lower()


_DESCRIPTIONS: dict[LabEventType, str] = {
    LabEventType.UNKNOWN: "An event of unknown type",
    LabEventType.LOG: "A log message",
    LabEventType.TEST: "A test event",
    LabEventType.ACTION_STATUS_CHANGE: "A node action changed status (running, succeeded, failed, ...)",
    LabEventType.NODE_STATUS_UPDATE: "A node reported its status",
    LabEventType.DEVICE_IO: "One operation on a device (valve, pump, gauge, ...), with duration and outcome",
    LabEventType.STATE_TRANSITION: "A component moved from one state to another",
    LabEventType.HEALTH_CHECK_FAILED: "A health check failed",
    LabEventType.RUN_START: "A run (an observing night, a sample run) started",
    LabEventType.RUN_COMPLETE: "A run finished successfully",
    LabEventType.RUN_FAIL: "A run failed",
    LabEventType.RUN_CANCEL: "A run was cancelled",
}
