"""MQTT telemetry: per-request timings, availability, periodic stats, Home Assistant discovery.

    payloads.py   what is published where (topics and JSON bodies, discovery configs)
    stats.py      counters and the rolling latency window behind the stats message
    publisher.py  the aiomqtt connection loop, bounded queue, last will, backoff
"""

from .payloads import RequestEvent
from .publisher import Telemetry

__all__ = ["RequestEvent", "Telemetry"]
