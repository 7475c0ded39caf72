-- Down time per node: from node_stop to its next node_start (or the end); before a first
-- node_start the node was down. At an instant with both (`turn`), the node_stop comes first when
-- the node was up before it (a restart), the node_start when it was down (it came up and stopped
-- again); it was down when the last earlier instant with events of one kind only had node_stops.
-- Continues intervals.sql; used by nodes.sql and periods.sql.
, state_edges AS (
    SELECT
        node,
        ts,
        edge,
        leadInFrame(ts, 1, {end:Int64})
            OVER (PARTITION BY node ORDER BY ts, turn ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS next_ts,
        row_number() OVER (PARTITION BY node ORDER BY ts, turn) AS position
    FROM (
        SELECT *, if(ifNull(anyLast(only) OVER (PARTITION BY node ORDER BY ts
                RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 3) = 4, edge, -edge) AS turn
        FROM (
            SELECT
                NodeId AS node,
                toUnixTimestamp64Nano(Timestamp) AS ts,
                if(EventType = 'node_start', 3, 4) AS edge,
                if(min(edge) OVER instant = max(edge) OVER instant, toNullable(edge), NULL) AS only
            FROM $logs
            WHERE $not_expired
              AND NodeId != ''
              AND EventType IN ('node_start', 'node_stop')
              AND Timestamp >= fromUnixTimestamp64Nano({start:Int64} - {lookback:Int64})
              AND Timestamp < fromUnixTimestamp64Nano({end:Int64})
              AND (empty({nodes:Array(String)}) OR has({nodes:Array(String)}, NodeId))
            WINDOW instant AS (PARTITION BY node ORDER BY ts RANGE BETWEEN CURRENT ROW AND CURRENT ROW)
        )
    )
),
downtime AS (
    SELECT node, groupArray((s, e)) AS downs, sum(e - s) AS down_ns
    FROM (
        SELECT node, greatest(s, {start:Int64}) AS s, least(e, {end:Int64}, {now:Int64}) AS e
        FROM (
            SELECT node, if(edge = 4, ts, {start:Int64} - {lookback:Int64}) AS s, if(edge = 4, next_ts, ts) AS e
            FROM state_edges
            WHERE edge = 4 OR position = 1
        )
        WHERE least(e, {end:Int64}, {now:Int64}) > greatest(s, {start:Int64})
    )
    GROUP BY node
)
