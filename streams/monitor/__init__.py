"""What `streams monitor` shows: iterator age, throughput, parked records, queue depths.

Never ships to Lambda. Readers never open a shard (DynamoDB Streams allows two readers a shard).
"""
