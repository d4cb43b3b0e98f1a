"""``blockframe health``: scrub, repair and report a whole archive (:mod:`.scrub`), with
its freshness state (:mod:`.state`) and report (:mod:`.report`)."""

from blockframe.health.report import HealthReport, print_report, report_schema
from blockframe.health.scrub import Health, Options, Plan, parse_duration, scrub
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
