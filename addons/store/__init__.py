"""DuckDB (or a DuckLake): the schema, the batched writer thread and its parts, the spool, keys,
governance tables, read-only queries, views, the rollup and the snapshot."""
