-- Per node: available, busy and idle time, utilization, and its actions (counted where they end).
-- Busy time is the union of the node's actions, and busy time while down counts as available (the
-- template fields sweep, steps, busy and overlap: utilization.SWEEP). Continues intervals, downtime
-- and seen.
, busy_nodes AS (
    SELECT
        node,
        anyIf(workcell, workcell != '') AS workcell,
        anyIf(lab, lab != '') AS lab,
        groupArrayIf(s, e > s) AS starts,
        groupArrayIf(e, e > s) AS ends,
        countIf(counted) AS actions,
        countIf(counted AND outcome = 1) AS completed,
        countIf(counted AND outcome = 2) AS failed,
        countIf(counted AND outcome = 3) AS cancelled,
        countIf(counted AND outcome = 0) AS running,
        -- the durations of the actions that ended in the range (an end stamped before its start,
        -- by another clock, took no time)
        countIf(counted AND outcome != 0) AS ended,
        avgIf(greatest(e_raw - s_raw, 0) / 1e9, counted AND outcome != 0) AS mean_s,
        quantileExactIf(0.95)(greatest(e_raw - s_raw, 0) / 1e9, counted AND outcome != 0) AS p95_s
    FROM actions
    GROUP BY node
    HAVING length(starts) > 0 OR actions > 0
),
reported AS (
    SELECT
        if(u.node != '', u.node, b.node) AS node,
        if(u.workcell != '', u.workcell, b.workcell) AS workcell,
        if(u.lab != '', u.lab, b.lab) AS lab,
        b.starts AS starts, b.ends AS ends, b.actions AS actions, b.completed AS completed, b.failed AS failed,
        b.cancelled AS cancelled, b.running AS running, b.ended AS ended, b.mean_s AS mean_s, b.p95_s AS p95_s,
        d.downs AS downs, d.down_ns AS down_ns
    FROM seen AS u
    FULL OUTER JOIN busy_nodes AS b ON u.node = b.node
    LEFT JOIN downtime AS d ON d.node = if(u.node != '', u.node, b.node)
)
SELECT
    node,
    workcell,
    lab,
    greatest(0, least({end:Int64}, {now:Int64}) - {start:Int64}) - down_ns + overlap_ns AS available_ns,
    busy_ns,
    actions,
    completed,
    failed,
    cancelled,
    running,
    if(ended = 0, 0, mean_s) AS mean_action_s,
    if(ended = 0, 0, p95_s) AS p95_action_s
FROM (
    -- the sweep stays in here: only its sums leave the query
    SELECT *, $busy AS busy_ns, $overlap AS overlap_ns
    FROM (SELECT *, $steps AS steps FROM (SELECT *, $sweep AS sweep FROM (SELECT *, $line AS line FROM reported WHERE $line_fits)))
)
ORDER BY node
