"""What `streams monitor` shows: iterator age, throughput, parked records, queue depths.

Never ships to Lambda. Readers never open a shard (DynamoDB Streams allows two readers a shard).
"""

from streams.monitor.chart import write_chart
from streams.monitor.cloudwatch import CloudWatchMonitor
from streams.monitor.history import MonitorHistory, MonitorSampler
from streams.monitor.local import LocalMonitor
from streams.monitor.model import MonitorSnapshot, queues_from_outputs, queues_from_stack

__all__ = [
    "CloudWatchMonitor",
    "LocalMonitor",
    "MonitorHistory",
    "MonitorSampler",
    "MonitorSnapshot",
    "queues_from_outputs",
    "queues_from_stack",
    "write_chart",
]
