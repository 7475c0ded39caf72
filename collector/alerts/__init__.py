"""Alerts: rules over stored events, evaluated in SQL, and the notifiers that tell people.

The `alerts` exporter (labtel.collector.exporters.alerts) runs an engine (`engine`) that reads
what the `clickhouse` exporter stored, tests the rules (`rules`) in one query, groups and
de-duplicates what matched, and hands alerts to a dispatcher (`delivery`) that sends them through
the notifiers (`smtp`, `webhook`) off the ingest path. What fired and how delivery went is kept
in ClickHouse (`history`).
"""
