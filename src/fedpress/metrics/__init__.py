"""Run metrics: a JSON-lines event log, the summary computed from it, and plots of it."""

from .events import EventLog, read_events
from .summary import SummaryBuilder, summarize

__all__ = ["EventLog", "SummaryBuilder", "read_events", "summarize"]
