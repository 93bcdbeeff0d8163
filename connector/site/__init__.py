"""The site side: kinds table, poller, publisher (fingerprints, restore from topic), heartbeat.

`run_site` (in `runner`) is what `cascade-connector produce` calls.
"""
