"""A geochronology extraction line, Pychron-like: queues of runs, each an extraction and a
measurement, with device I/O on valves, pumps, gauges, the laser and the spectrometer.

Device operations take realistic latencies and rarely fail (a failed operation is retried once;
a second failure fails the run); the pressure gauge is health-checked during measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

from labtel.demo.sim import Process, Sim, SpanRef, Task
from labtel.demo.truth import Truth
from labtel.sdk.event_types import LabEventType as T

LINE = "argon-line-1"
SERVICE = "pychron.argon-line-1"
VALVES = [f"valve_{letter}" for letter in "ABCDEFGH"]
LATENCY_MS = {
    "valve": (80, 250),
    "gauge": (15, 60),
    "pump": (150, 400),
    "laser": (1500, 4000),
    "spectrometer": (40, 120),
}
FAILURE_RATE = 0.01
MATERIALS = ["sanidine", "biotite", "plagioclase", "groundmass"]


def _family(device: str) -> str:
    return device.split("_")[0] if not device.startswith(("ion", "turbo")) else "pump"


@dataclass
class ExtractionLine:
    sim: Sim
    truth: Truth
    queue_number: int = 0

    def start(self) -> None:
        self.sim.spawn(self._queues(), delay_s=self.sim.rng.uniform(60, 1800))

    def _queues(self) -> Process:
        sim = self.sim
        while True:
            yield from self._queue()
            yield sim.rng.uniform(2, 5) * 3600

    def _queue(self) -> Process:
        sim, truth = self.sim, self.truth
        self.queue_number += 1
        queue = f"q-{self.queue_number:04d}"
        runs = sim.rng.randint(5, 9)
        sim.log(
            SERVICE,
            "pychron.experiment",
            9,
            f"Queue {queue} started with {runs} runs",
            event_type=T.QUEUE_START,
            queue_id=queue,
            runs=runs,
            line=LINE,
        )
        truth.geochronology["queues"] += 1
        failed = 0
        for _ in range(runs):
            if sim.now_ns + 3600 * 1_000_000_000 > sim.end_ns:
                break
            ok = yield from self._run(queue)
            failed += 0 if ok else 1
            yield sim.rng.uniform(60, 240)
        status = "success" if not failed else "completed_with_failures"
        sim.log(
            SERVICE,
            "pychron.experiment",
            9,
            f"Queue {queue} finished ({status})",
            event_type=T.QUEUE_COMPLETE,
            queue_id=queue,
            status=status,
            failed_runs=failed,
            line=LINE,
        )

    def _run(self, queue: str) -> Task:
        sim, truth = self.sim, self.truth
        run_id = sim.uid("run")
        sample = f"GR-{sim.rng.randint(1000, 9999)}"
        ids = {"run_id": run_id, "queue_id": queue}
        span = sim.start_span(SERVICE, f"run {run_id}", sample=sample, **ids)
        sim.log(
            SERVICE,
            "pychron.experiment",
            9,
            f"Run {run_id} started: {sample}",
            span,
            event_type=T.RUN_START,
            sample=sample,
            material=sim.rng.choice(MATERIALS),
            **ids,
        )
        started = sim.now_ns
        ok = yield from self._extraction(span, ids)
        if ok:
            yield sim.rng.uniform(240, 360)  # gas equilibration
            ok = yield from self._measurement(span, ids)
        if ok:
            sim.log(
                SERVICE,
                "pychron.analysis",
                9,
                f"Run {run_id} analysed",
                span,
                event_type=T.ANALYSIS_COMPLETE,
                n_peaks=sim.rng.randint(4, 7),
                **ids,
            )
        seconds = (sim.now_ns - started) / 1e9
        sim.log(
            SERVICE,
            "pychron.experiment",
            9 if ok else 17,
            f"Run {run_id} {'completed' if ok else 'failed'}",
            span,
            event_type=T.RUN_COMPLETE if ok else T.RUN_FAIL,
            duration_ms=round(seconds * 1000, 1),
            status="success" if ok else "failed",
            **ids,
        )
        truth.geochronology["runs_completed" if ok else "runs_failed"] += 1
        sim.end_span(span, None if ok else "device failure")
        return ok

    def _phase(self, name: str, parent: SpanRef, ids: dict[str, str]) -> SpanRef:
        span = self.sim.start_span(SERVICE, f"{name} phase", parent, phase=name, **ids)
        self.sim.log(
            SERVICE, "pychron.experiment", 5, f"{name} started", span, event_type=T.PHASE_START, phase=name, **ids
        )
        return span

    def _end_phase(self, name: str, span: SpanRef, started_ns: int, ok: bool, ids: dict[str, str]) -> None:
        seconds = (self.sim.now_ns - started_ns) / 1e9
        self.sim.log(
            SERVICE,
            "pychron.experiment",
            9 if ok else 17,
            f"{name} {'completed' if ok else 'failed'}",
            span,
            event_type=T.PHASE_COMPLETE,
            phase=name,
            status="success" if ok else "failed",
            duration_ms=round(seconds * 1000, 1),
            **ids,
        )
        self.sim.end_span(span, None if ok else f"{name} failed")

    def _extraction(self, parent: SpanRef, ids: dict[str, str]) -> Task:
        sim = self.sim
        span, started = self._phase("extraction", parent, ids), sim.now_ns
        steps = [(v, "open") for v in sim.rng.sample(VALVES, 3)] + [
            ("turbo_pump", "start"),
            ("gauge_1", "read"),
            ("laser_co2", "fire"),
            ("gauge_1", "read"),
        ]
        steps += [(v, "close") for v in sim.rng.sample(VALVES, 3)]
        ok = True
        for device, operation in steps:
            ok = yield from self._device(device, operation, span, ids)
            if not ok:
                break
            yield sim.rng.uniform(1, 20)
        self._end_phase("extraction", span, started, ok, ids)
        return ok

    def _measurement(self, parent: SpanRef, ids: dict[str, str]) -> Task:
        sim = self.sim
        span, started = self._phase("measurement", parent, ids), sim.now_ns
        reads = int(sim.rng.uniform(480, 720) / 10)
        ok = True
        for index in range(reads):
            ok = yield from self._device("spectrometer", "read_intensity", span, ids)
            if not ok:
                break
            if index % 6 == 0:
                self._health_check(span, ids)
            yield 10
        self._end_phase("measurement", span, started, ok, ids)
        return ok

    def _device(self, device: str, operation: str, span: SpanRef, ids: dict[str, str]) -> Task:
        """One device operation, retried once; False when it failed twice."""
        sim, truth = self.sim, self.truth
        for attempt in (1, 2):
            low, high = LATENCY_MS[_family(device)]
            latency = sim.rng.uniform(low, high)
            failed = sim.rng.random() < FAILURE_RATE
            yield latency / 1000
            counts = truth.devices[device]
            counts["operations"] += 1
            counts["failures"] += failed
            sim.log(
                SERVICE,
                "pychron.device_io",
                17 if failed else 5,
                f"{device} {operation} {'failed' if failed else 'ok'} in {latency:.0f} ms",
                span,
                event_type=T.DEVICE_IO,
                **{"lab.device": device, "lab.device.operation": operation},
                duration_ms=round(latency, 2),
                success=not failed,
                attempt=attempt,
                **({"error": f"{device} did not respond"} if failed else {}),
                **ids,
            )
            if not failed:
                return True
        return False

    def _health_check(self, span: SpanRef, ids: dict[str, str]) -> None:
        sim = self.sim
        if sim.rng.random() < 0.02:
            self.truth.geochronology["health_check_failures"] += 1
            sim.log(
                SERVICE,
                "pychron.health",
                17,
                "Health check failed: pressure above limit",
                span,
                event_type=T.HEALTH_CHECK_FAILED,
                phase="measurement",
                **{"health_check.kind": "pressure"},
                pressure_torr=round(sim.rng.uniform(2e-8, 9e-8), 10),
                **ids,
            )
