"""An observatory, PANOPTES-like: nightly runs between dusk and dawn in the site's time zone.

Weather and mount telemetry every few seconds, observation blocks of exposures (frames),
dome and safety events when the weather turns, and occasional mount faults. The site is on La
Palma (Atlantic/Canary), whose clocks change for daylight saving time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from labtel.demo.sim import SECOND, Process, Sim, SpanRef
from labtel.demo.truth import Truth
from labtel.sdk.event_types import LabEventType as T

SITE = "PAN001"
SERVICE = "panoptes.pocs"
TIMEZONE = ZoneInfo("Atlantic/Canary")
TELEMETRY_EVERY_S = 10.0
TARGETS = [
    ("M31", 10.68, 41.27),
    ("M42", 83.82, -5.39),
    ("M45", 56.75, 24.12),
    ("NGC 7000", 314.75, 44.33),
    ("M13", 250.42, 36.46),
    ("M57", 283.40, 33.03),
    ("M101", 210.80, 54.35),
    ("Kepler-186", 298.65, 43.95),
]


def night_bounds(local_day: datetime) -> tuple[datetime, datetime]:
    """Dusk on `local_day` and dawn the next morning, local time: nights are longer in winter."""
    day_of_year = local_day.timetuple().tm_yday
    offset_h = 1.25 * math.cos(2 * math.pi * (day_of_year - 172) / 365)
    midnight = local_day.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=TIMEZONE)
    dusk = midnight + timedelta(hours=20 + offset_h)
    dawn = midnight + timedelta(days=1, hours=7 - offset_h)
    return dusk, dawn


@dataclass
class Observatory:
    sim: Sim
    truth: Truth
    run_number: int = 0
    safe: bool = True
    observing: bool = False
    night: SpanRef | None = None
    humidity: float = 40.0
    wind: float = 4.0
    temperature: float = 12.0
    pointing: tuple[float, float] = field(default=(0.0, 90.0))

    def start(self) -> None:
        self.sim.spawn(self._nights())

    def is_safe(self) -> bool:
        """Whether the weather allows observing now (other processes change it while we wait)."""
        return self.safe

    def _nights(self) -> Process:
        sim = self.sim
        day = datetime.fromtimestamp(sim.now_ns / SECOND, TIMEZONE) - timedelta(days=1)
        while True:
            dusk, dawn = night_bounds(day)
            day += timedelta(days=1)
            dusk_ns, dawn_ns = int(dusk.timestamp() * SECOND), int(dawn.timestamp() * SECOND)
            if dawn_ns <= sim.now_ns:
                continue
            if dusk_ns > sim.now_ns:
                yield (dusk_ns - sim.now_ns) / SECOND
            yield from self._night(dawn_ns)

    def _night(self, dawn_ns: int) -> Process:
        sim, truth = self.sim, self.truth
        self.run_number += 1
        run_id = f"{self.run_number:03d}"
        night_of = datetime.fromtimestamp(sim.now_ns / SECOND, TIMEZONE).strftime("%Y-%m-%d")
        self.night = sim.start_span(SERVICE, f"night {night_of}", run_id=run_id, site=SITE)
        truth.observatory["nights"] += 1
        sim.log(
            SERVICE,
            "panoptes.run",
            9,
            f"Run {run_id} started for the night of {night_of}",
            self.night,
            event_type=T.RUN_START,
            run_id=run_id,
            site=SITE,
            title="Observatory online",
            tags=["run", "startup"],
        )
        self.observing, self.safe = True, True
        sim.spawn(self._telemetry(dawn_ns))
        sim.spawn(self._weather_episode(dawn_ns), delay_s=sim.rng.uniform(600, 6 * 3600))
        if sim.rng.random() < 0.15:
            sim.spawn(self._mount_fault(run_id), delay_s=sim.rng.uniform(1800, 8 * 3600))
        self._dome(True, run_id)
        while sim.now_ns < dawn_ns - 600 * SECOND:
            if not self.safe:
                yield 60
                continue
            yield from self._observation_block(run_id, dawn_ns)
        self.observing = False
        self._dome(False, run_id)
        sim.log(
            SERVICE,
            "panoptes.run",
            9,
            f"Run {run_id} finished at dawn",
            self.night,
            event_type=T.RUN_COMPLETE,
            run_id=run_id,
            site=SITE,
            frames=truth.observatory["frames"],
            title="Observatory closed for the day",
            tags=["run", "shutdown"],
        )
        sim.end_span(self.night)
        yield max(1.0, (dawn_ns - sim.now_ns) / SECOND)

    def _dome(self, open_: bool, run_id: str) -> None:
        self.sim.log(
            SERVICE,
            "panoptes.dome",
            9,
            "Dome opened" if open_ else "Dome closed",
            self.night,
            event_type="dome_open" if open_ else "dome_close",
            run_id=run_id,
            site=SITE,
            tags=["dome"],
        )

    def _observation_block(self, run_id: str, dawn_ns: int) -> Process:
        sim, truth = self.sim, self.truth
        target, ra, dec = sim.rng.choice(TARGETS)
        block = sim.start_span(SERVICE, f"observe {target}", self.night, run_id=run_id, target=target)
        sim.log(
            SERVICE,
            "panoptes.mount",
            9,
            f"Slewing to {target}",
            block,
            event_type="slew",
            run_id=run_id,
            target=target,
            ra_deg=ra,
            dec_deg=dec,
        )
        yield sim.rng.uniform(25, 70)
        self.pointing = (ra, dec)
        end_ns = min(dawn_ns - 600 * SECOND, sim.now_ns + int(sim.rng.uniform(1800, 5400) * SECOND))
        exposure = sim.rng.choice([60, 120, 180])
        frame = 0
        while sim.now_ns + (exposure + 8) * SECOND < end_ns and self.is_safe():
            yield exposure + 8
            if not self.is_safe():
                break
            frame += 1
            truth.observatory["frames"] += 1
            sim.log(
                SERVICE,
                "panoptes.camera",
                9,
                f"Captured frame {frame} of {target}",
                block,
                event_type="frame_captured",
                run_id=run_id,
                target=target,
                frame=frame,
                exposure_s=exposure,
                camera="cam_14d3bd",
                filter=sim.rng.choice(["g", "r", "i"]),
                fwhm_arcsec=round(sim.rng.gauss(2.1, 0.4), 2),
                tags=["imaging"],
            )
        sim.end_span(block, None if self.is_safe() else "stopped by unsafe weather")

    def _telemetry(self, dawn_ns: int) -> Process:
        sim = self.sim
        while self.observing and sim.now_ns < dawn_ns:
            self.temperature += sim.rng.gauss(-0.01, 0.05)
            self.humidity = min(100.0, max(5.0, self.humidity + sim.rng.gauss(0, 0.4)))
            self.wind = max(0.0, self.wind + sim.rng.gauss(0, 0.3))
            sim.log(
                SERVICE,
                "panoptes.weather",
                5,
                "weather",
                self.night,
                event_type="weather",
                site=SITE,
                temperature_c=round(self.temperature, 2),
                humidity=round(self.humidity, 1),
                wind_speed_ms=round(self.wind, 2),
                sky_quality=round(sim.rng.gauss(21.3, 0.2), 2),
                safe=self.safe,
            )
            ra, dec = self.pointing
            sim.log(
                SERVICE,
                "panoptes.mount",
                5,
                "mount",
                self.night,
                event_type="mount_status",
                site=SITE,
                ra_deg=round(ra + sim.rng.gauss(0, 0.0005), 5),
                dec_deg=round(dec + sim.rng.gauss(0, 0.0005), 5),
                tracking=self.safe,
                state="tracking" if self.safe else "parked",
            )
            self.truth.observatory["telemetry"] += 2
            yield TELEMETRY_EVERY_S

    def _weather_episode(self, dawn_ns: int) -> Process:
        sim = self.sim
        if sim.rng.random() > 0.35 or sim.now_ns > dawn_ns:
            return
        self.safe = False
        self.humidity, self.wind = 88.0, 16.0
        self.truth.observatory["unsafe_episodes"] += 1
        sim.log(
            SERVICE,
            "panoptes.safety",
            13,
            "Weather unsafe: closing the dome",
            self.night,
            event_type="safety_unsafe",
            site=SITE,
            humidity=self.humidity,
            wind_speed_ms=self.wind,
            title="Dome slit wind threshold exceeded",
            tags=["dome", "weather", "safety"],
        )
        self._dome(False, f"{self.run_number:03d}")
        yield sim.rng.uniform(1200, 5400)
        self.humidity, self.wind = 55.0, 5.0
        self.safe = True
        sim.log(
            SERVICE,
            "panoptes.safety",
            9,
            "Weather safe again",
            self.night,
            event_type="safety_safe",
            site=SITE,
            tags=["weather", "safety"],
        )
        if self.observing:
            self._dome(True, f"{self.run_number:03d}")

    def _mount_fault(self, run_id: str) -> Process:
        sim = self.sim
        if not self.observing:
            return
        self.truth.observatory["faults"] += 1
        sim.log(
            SERVICE,
            "panoptes.mount",
            17,
            "Mount fault: axis error, parking",
            self.night,
            event_type="mount_fault",
            run_id=run_id,
            site=SITE,
            error="RA axis encoder timeout",
            tags=["mount", "fault"],
        )
        yield sim.rng.uniform(120, 600)
        sim.log(
            SERVICE,
            "panoptes.mount",
            9,
            "Mount recovered",
            self.night,
            event_type="mount_recovered",
            run_id=run_id,
            site=SITE,
            tags=["mount"],
        )
