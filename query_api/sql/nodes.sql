-- Per node: available, busy and idle time, utilization, and its actions (counted where they end).
-- Follows intervals.sql.
SELECT
    n.node AS node,
    n.workcell AS workcell,
    n.lab AS lab,
    greatest(0, least({end:Int64}, {now:Int64}) - {start:Int64}) - ifNull(d.ns, 0) + ifNull(o.ns, 0) AS available_ns,
    ifNull(b.ns, 0) AS busy_ns,
    ifNull(a.actions, 0) AS actions,
    ifNull(a.completed, 0) AS completed,
    ifNull(a.failed, 0) AS failed,
    ifNull(a.cancelled, 0) AS cancelled,
    ifNull(a.running, 0) AS running,
    ifNull(a.mean_s, 0) AS mean_action_s,
    ifNull(a.p95_s, 0) AS p95_action_s
FROM node_units AS n
LEFT JOIN (SELECT unit, sum(e - s) AS ns FROM busy GROUP BY unit) AS b ON b.unit = n.node
LEFT JOIN (SELECT unit, sum(e - s) AS ns FROM down GROUP BY unit) AS d ON d.unit = n.node
LEFT JOIN (SELECT unit, sum(e - s) AS ns FROM busy_while_down GROUP BY unit) AS o ON o.unit = n.node
LEFT JOIN (
    SELECT
        node,
        count() AS actions,
        countIf(outcome = 'completed') AS completed,
        countIf(outcome = 'failed') AS failed,
        countIf(outcome = 'cancelled') AS cancelled,
        countIf(outcome = 'running') AS running,
        avgIf((e_raw - s_raw) / 1e9, outcome != 'running') AS mean_s,
        quantileExactIf(0.95)((e_raw - s_raw) / 1e9, outcome != 'running') AS p95_s
    FROM actions
    WHERE e_raw >= {start:Int64} AND e_raw < least({end:Int64}, {now:Int64} + 1)
    GROUP BY node
) AS a ON a.node = n.node
ORDER BY node
