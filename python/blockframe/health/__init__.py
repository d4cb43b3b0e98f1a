"""``blockframe health``: scrub, repair and report a whole archive. A run is planned
(:mod:`.plan`: what is listed, selected and skipped), then run (:mod:`.scrub`), removing
what interrupted operations left (:mod:`.leftovers`), with its freshness state
(:mod:`.state`) and report (:mod:`.report`)."""

from blockframe.health.plan import Options, Plan, parse_duration
from blockframe.health.report import HealthReport, print_report, report_schema
from blockframe.health.scrub import Health, scrub
from blockframe.health.state import State

__all__ = [
    "Health",
    "HealthReport",
    "Options",
    "Plan",
    "State",
    "parse_duration",
    "print_report",
    "report_schema",
    "scrub",
]
