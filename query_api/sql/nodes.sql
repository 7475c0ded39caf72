-- Per node: available, busy and idle time, utilization, and its actions (counted where they end).
-- Continues intervals.sql, downtime.sql and reported.sql.
SELECT
    node,
    workcell,
    lab,
    greatest(0, least({end:Int64}, {now:Int64}) - {start:Int64}) - down_ns + arraySum(arrayMap(o -> o.2 - o.1, overlaps))
        AS available_ns,
    busy_ns,
    actions,
    completed,
    failed,
    cancelled,
    running,
    if(empty(durations), 0, arrayAvg(durations)) AS mean_action_s,
    if(empty(durations), 0, arrayReduce('quantileExact(0.95)', durations)) AS p95_action_s
FROM reported
ORDER BY node
