"""A self-driving chemistry lab, MADSci-like: a workcell of nodes that experiments drive.

Experiments run a few workflows; each workflow step runs an action on one node (liquid handler,
plate reader, robot arm, incubator, ...), which takes a realistic time and rarely fails. A node
does one action at a time, so concurrent experiments queue for it. Events carry MADSci's
ownership ids (lab, workcell, node, workflow, step, experiment, campaign, user); the workcell
engine reports action status under `action_status` and nodes under `status`, as MADSci does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from labtel.demo.sim import SECOND, Process, Sim, SpanRef, Task
from labtel.demo.truth import Truth
from labtel.sdk.event_types import LabEventType as T

LAB = "chem-lab-A"
WORKCELL = "wc_chem_1"
USERS = ["alice", "bob", "carol", "dave", "erin"]
CAMPAIGNS = ["campaign-catalysis", "campaign-solubility"]
WORKCELL_SERVICE = "madsci.workcell"
EXPERIMENT_SERVICE = "madsci.experiment"

# node kind: (node ids, actions with (median seconds, spread))
NODE_KINDS: dict[str, tuple[list[str], dict[str, tuple[float, float]]]] = {
    "liquid_handler": (["ot2_1", "ot2_2"], {"transfer": (180, 0.35), "mix": (90, 0.3), "dilute": (240, 0.3)}),
    "plate_reader": (["platereader_1"], {"read_absorbance": (75, 0.2), "read_fluorescence": (110, 0.2)}),
    "robot_arm": (["pf400_1"], {"move_plate": (25, 0.25)}),
    "incubator": (["incubator_1"], {"incubate": (1200, 0.2)}),
    "sealer": (["sealer_1"], {"seal": (18, 0.15)}),
    "peeler": (["peeler_1"], {"peel": (14, 0.15)}),
    "centrifuge": (["centrifuge_1"], {"spin": (300, 0.1)}),
    "thermocycler": (["thermocycler_1"], {"run_pcr": (2400, 0.1)}),
}
WORKFLOWS: dict[str, list[tuple[str, str]]] = {
    "plate_assay": [
        ("robot_arm", "move_plate"),
        ("liquid_handler", "transfer"),
        ("sealer", "seal"),
        ("robot_arm", "move_plate"),
        ("incubator", "incubate"),
        ("peeler", "peel"),
        ("plate_reader", "read_absorbance"),
    ],
    "serial_dilution": [
        ("liquid_handler", "dilute"),
        ("liquid_handler", "mix"),
        ("robot_arm", "move_plate"),
        ("plate_reader", "read_fluorescence"),
    ],
    "spin_down": [("robot_arm", "move_plate"), ("centrifuge", "spin"), ("robot_arm", "move_plate")],
    "pcr": [
        ("liquid_handler", "transfer"),
        ("sealer", "seal"),
        ("robot_arm", "move_plate"),
        ("thermocycler", "run_pcr"),
    ],
}
FAILURE_RATE = 0.015


@dataclass
class Node:
    id: str
    kind: str
    busy_until_ns: int = 0
    actions: int = 0

    @property
    def service(self) -> str:
        return f"madsci.node.{self.id}"


@dataclass
class ChemistryLab:
    """The lab's state while it is simulated."""

    sim: Sim
    truth: Truth
    node_count: int = 10
    nodes: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, (ids, _) in NODE_KINDS.items():
            for node_id in ids:
                if len(self.nodes) < self.node_count:
                    self.nodes[node_id] = Node(node_id, kind)

    def start(self) -> None:
        sim = self.sim
        sim.spawn(self._startup())
        for node in self.nodes.values():
            sim.spawn(self._status_updates(node), delay_s=sim.rng.uniform(5, 600))
        sim.spawn(self._experiments(), delay_s=sim.rng.uniform(30, 300))

    # --- processes ----------------------------------------------------------------------------

    def _startup(self) -> Process:
        sim = self.sim
        sim.log(WORKCELL_SERVICE, "madsci.lab", 9, f"Lab {LAB} started", event_type=T.LAB_START, lab_id=LAB)
        sim.log(
            WORKCELL_SERVICE,
            "madsci.workcell",
            9,
            f"Workcell {WORKCELL} started",
            event_type=T.WORKCELL_START,
            workcell_id=WORKCELL,
            lab_id=LAB,
        )
        for node in self.nodes.values():
            yield sim.rng.uniform(0.5, 3)
            sim.log(
                node.service,
                "madsci.node",
                9,
                f"Node {node.id} started",
                event_type=T.NODE_START,
                node_id=node.id,
                workcell_id=WORKCELL,
                node_kind=node.kind,
            )

    def _status_updates(self, node: Node) -> Process:
        sim = self.sim
        while True:
            busy = sim.now_ns < node.busy_until_ns
            sim.log(
                node.service,
                "madsci.node",
                5,
                f"{node.id} is {'busy' if busy else 'idle'}",
                event_type=T.NODE_STATUS_UPDATE,
                node_id=node.id,
                workcell_id=WORKCELL,
                node_status="busy" if busy else "idle",
                actions_completed=node.actions,
            )
            yield 600 + sim.rng.uniform(-30, 30)

    def _experiments(self) -> Process:
        sim = self.sim
        while True:
            sim.spawn(self._experiment())
            yield sim.rng.expovariate(1 / 2400)

    def _experiment(self) -> Process:
        sim, truth = self.sim, self.truth
        user, campaign = sim.rng.choice(USERS), sim.rng.choice(CAMPAIGNS)
        experiment_id = sim.uid("exp")
        names = [sim.rng.choice(list(WORKFLOWS)) for _ in range(sim.rng.randint(2, 4))]
        if not self._fits(names):
            return
        ids = {"experiment_id": experiment_id, "campaign_id": campaign, "user_id": user, "workcell_id": WORKCELL}
        span = sim.start_span(EXPERIMENT_SERVICE, f"experiment {experiment_id}", **ids)
        sim.log(
            EXPERIMENT_SERVICE,
            "madsci.experiment",
            9,
            f"Experiment {experiment_id} started by {user}",
            span,
            event_type=T.EXPERIMENT_START,
            workflows=len(names),
            **ids,
        )
        truth.experiment_started(user)
        ok = True
        for name in names:
            ok = yield from self._workflow(name, span, ids)
            if not ok:
                break
        kind = T.EXPERIMENT_COMPLETE if ok else T.EXPERIMENT_FAILED
        sim.log(
            EXPERIMENT_SERVICE,
            "madsci.experiment",
            9 if ok else 17,
            f"Experiment {experiment_id} {'completed' if ok else 'failed'}",
            span,
            event_type=kind,
            **ids,
        )
        truth.experiment_finished(ok)
        sim.end_span(span, None if ok else "a workflow failed")

    def _fits(self, names: list[str]) -> bool:
        """Whether the experiment can finish before the simulation ends (so every action ends)."""
        worst = sum(NODE_KINDS[kind][1][action][0] * 3 for name in names for kind, action in WORKFLOWS[name])
        queue = max((n.busy_until_ns for n in self.nodes.values()), default=0)
        return max(queue, self.sim.now_ns) + int(worst * SECOND) < self.sim.end_ns

    def _workflow(self, name: str, parent: SpanRef, ids: dict[str, str]) -> Task:
        sim, truth = self.sim, self.truth
        workflow_id = sim.uid("wf")
        wf_ids = {**ids, "workflow_id": workflow_id}
        span = sim.start_span(WORKCELL_SERVICE, f"workflow {name}", parent, workflow_name=name, **wf_ids)
        started = sim.now_ns
        sim.log(
            WORKCELL_SERVICE,
            "madsci.workcell",
            9,
            f"Workflow {name} ({workflow_id}) started",
            span,
            event_type=T.WORKFLOW_START,
            workflow_name=name,
            author=ids["user_id"],
            **wf_ids,
        )
        truth.workflow_started(ids["user_id"])
        ok = True
        for index, (kind, action) in enumerate(WORKFLOWS[name]):
            node = self._pick(kind)
            if node is None:
                continue
            ok = yield from self._step(index, node, action, span, wf_ids)
            if not ok:
                break
        seconds = (sim.now_ns - started) / SECOND
        sim.log(
            WORKCELL_SERVICE,
            "madsci.workcell",
            9 if ok else 17,
            f"Workflow {name} ({workflow_id}) {'completed' if ok else 'aborted'}",
            span,
            event_type=T.WORKFLOW_COMPLETE if ok else T.WORKFLOW_ABORT,
            workflow_name=name,
            author=ids["user_id"],
            duration_seconds=round(seconds, 3),
            status="completed" if ok else "failed",
            **wf_ids,
        )
        truth.workflow_finished(ids["user_id"], ok, seconds)
        sim.end_span(span, None if ok else "a step failed")
        return ok

    def _pick(self, kind: str) -> Node | None:
        candidates = [n for n in self.nodes.values() if n.kind == kind]
        return min(candidates, key=lambda n: n.busy_until_ns) if candidates else None

    def _step(self, index: int, node: Node, action: str, parent: SpanRef, ids: dict[str, str]) -> Task:
        sim, truth = self.sim, self.truth
        while node.busy_until_ns > sim.now_ns:  # the node is busy with another experiment's action
            yield (node.busy_until_ns - sim.now_ns) / SECOND  # (another may have taken it meanwhile)
        median, spread = NODE_KINDS[node.kind][1][action]
        duration = median * math.exp(sim.rng.gauss(0, spread))
        failed = sim.rng.random() < FAILURE_RATE
        if failed:
            duration *= sim.rng.uniform(0.1, 0.9)
        node.busy_until_ns = sim.now_ns + int(duration * SECOND)
        truth.action_started(node.id, node.kind, ids["user_id"], sim.now_ns, node.busy_until_ns)
        step_id = sim.uid("step")
        action_id = sim.uid("act")
        step_ids = {**ids, "step_id": step_id, "node_id": node.id}
        span = sim.start_span(
            WORKCELL_SERVICE, f"step {index + 1}: {action} on {node.id}", parent, action=action, **step_ids
        )
        sim.log(
            WORKCELL_SERVICE,
            "madsci.workcell",
            9,
            f"Step {index + 1} started: {action} on {node.id}",
            span,
            event_type=T.WORKFLOW_STEP_START,
            action=action,
            step_index=index,
            **step_ids,
        )
        sim.log(
            node.service,
            "madsci.node",
            9,
            f"{node.id}: {action} started",
            span,
            event_type=T.ACTION_START,
            action=action,
            action_id=action_id,
            **step_ids,
        )
        sim.log(
            WORKCELL_SERVICE,
            "madsci.workcell",
            9,
            f"{node.id}: {action} running",
            span,
            event_type=T.ACTION_STATUS_CHANGE,
            action=action,
            action_id=action_id,
            action_status="running",
            **step_ids,
        )
        if node.kind == "liquid_handler":
            sim.log(
                node.service,
                "madsci.resource",
                5,
                f"{node.id}: tips allocated",
                span,
                event_type=T.RESOURCE_ALLOCATE,
                resource_id=sim.uid("tips"),
                resource_type="tip_rack",
                quantity=sim.rng.choice([8, 16, 96]),
                **step_ids,
            )
        yield duration
        node.actions += 1
        truth.action_finished(node.id, ids["user_id"], duration, failed)
        status = "failed" if failed else "succeeded"
        sim.log(
            node.service,
            "madsci.node",
            17 if failed else 9,
            f"{node.id}: {action} {'failed' if failed else 'completed'} in {duration:.1f} s",
            span,
            event_type=T.ACTION_STATUS_CHANGE,
            action=action,
            action_id=action_id,
            status=status,
            duration_ms=round(duration * 1000, 1),
            **step_ids,
        )
        sim.log(
            node.service,
            "madsci.node",
            17 if failed else 9,
            f"{node.id}: {action} {status}",
            span,
            event_type=T.ACTION_FAILED if failed else T.ACTION_COMPLETE,
            action=action,
            action_id=action_id,
            duration_ms=round(duration * 1000, 1),
            **step_ids,
        )
        if node.kind == "liquid_handler":
            sim.log(
                node.service,
                "madsci.resource",
                5,
                f"{node.id}: tips released",
                span,
                event_type=T.RESOURCE_RELEASE,
                resource_type="tip_rack",
                **step_ids,
            )
        sim.log(
            WORKCELL_SERVICE,
            "madsci.workcell",
            17 if failed else 9,
            f"Step {index + 1} {'failed' if failed else 'completed'}: {action} on {node.id}",
            span,
            event_type=T.WORKFLOW_STEP_FAILED if failed else T.WORKFLOW_STEP_COMPLETE,
            action=action,
            step_index=index,
            **step_ids,
        )
        sim.end_span(span, f"{action} failed on {node.id}" if failed else None)
        return not failed
