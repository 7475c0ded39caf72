-- The nodes reported: those with events in the range, or actions in it; with their busy time
-- (the union of their actions), their actions, and their down time.
-- Continues intervals.sql and downtime.sql; nodes.sql and periods.sql follow.
, busy_nodes AS (
    SELECT
        node,
        anyIf(workcell, workcell != '') AS workcell,
        anyIf(lab, lab != '') AS lab,
        sum(e - s) AS busy_ns,
        groupArrayIf((s, e), e > s) AS busy,
        sum(actions) AS actions,
        sum(completed) AS completed,
        sum(failed) AS failed,
        sum(cancelled) AS cancelled,
        sum(running) AS running,
        arrayFlatten(groupArray(durations)) AS durations,
        arrayFlatten(groupArray(ends)) AS ends
    FROM runs
    GROUP BY node
    HAVING busy_ns > 0 OR actions > 0
),
reported AS (
    SELECT
        if(u.node != '', u.node, b.node) AS node,
        if(u.workcell != '', u.workcell, b.workcell) AS workcell,
        if(u.lab != '', u.lab, b.lab) AS lab,
        b.busy_ns AS busy_ns,
        b.busy AS busy,
        b.actions AS actions,
        b.completed AS completed,
        b.failed AS failed,
        b.cancelled AS cancelled,
        b.running AS running,
        b.durations AS durations,
        b.ends AS ends,
        d.downs AS downs,
        d.down_ns AS down_ns,
        -- busy time while down (an action the node ran though it said it was stopped) is available
        arrayFilter(o -> o.2 > o.1, arrayFlatten(arrayMap(x -> arrayMap(p -> (greatest(p.1, x.1), least(p.2, x.2)), b.busy),
                                                          d.downs))) AS overlaps
    FROM (
        SELECT NodeId AS node, anyIf(WorkcellId, WorkcellId != '') AS workcell, anyIf(LabName, LabName != '') AS lab
        FROM $logs
        WHERE $not_expired
          AND NodeId != ''
          AND Timestamp >= fromUnixTimestamp64Nano({start:Int64})
          AND Timestamp < fromUnixTimestamp64Nano(least({end:Int64}, {now:Int64}))
          AND (empty({nodes:Array(String)}) OR has({nodes:Array(String)}, NodeId))
        GROUP BY node
    ) AS u
    FULL OUTER JOIN busy_nodes AS b ON u.node = b.node
    LEFT JOIN downtime AS d ON d.node = if(u.node != '', u.node, b.node)
)
