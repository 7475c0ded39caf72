"""The ClickHouse storage: connection, schema and migrations."""
