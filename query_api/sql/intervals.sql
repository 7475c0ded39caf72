-- labtel utilization: the actions every report is built from.
--
-- A WITH clause; each report's SQL continues it. Each step is named once downstream (ClickHouse runs
-- a CTE again wherever it is named). Times are Unix nanoseconds.
-- Parameters:
--   {start:Int64} {end:Int64}  the range analysed; {now:Int64}: nothing counts after it
--   {lookback:Int64}           how far before (and after) the range events are read, so actions
--                              crossing its ends are found whole
--   {open_limit:Int64}         an action with no end event counts as running this long at most
--   {nodes:Array(String)}      only these nodes (empty: all)
-- Template fields: $logs (the logs table), $not_expired.
WITH
    -- Events that start or end an action (the lab columns come from their attributes, migration 6).
    edges AS (
        SELECT
            NodeId AS node,
            toUnixTimestamp64Nano(Timestamp) AS ts,
            multiIf(
                EventType = 'action_start'
                    OR (EventType = 'action_status_change' AND ActionStatus IN ('running', 'started', 'in_progress')), 1,
                EventType IN ('action_complete', 'action_failed', 'action_cancelled')
                    OR (EventType = 'action_status_change'
                        AND ActionStatus IN ('completed', 'succeeded', 'finished', 'failed', 'cancelled', 'canceled', 'aborted')), 2,
                0) AS edge,
            -- outcome of an end: 1 completed, 2 failed, 3 cancelled (0: still running)
            toUInt8(multiIf(EventType = 'action_failed' OR ActionStatus = 'failed', 2,
                            EventType = 'action_cancelled' OR ActionStatus IN ('cancelled', 'canceled', 'aborted'), 3,
                            1)) AS outcome,
            ActionId AS action_id,
            DurationMs AS reported_ms,
            UserId AS user,
            ExperimentId AS experiment,
            WorkflowId AS workflow,
            WorkcellId AS workcell,
            LabName AS lab
        FROM $logs
        WHERE $not_expired
          AND NodeId != ''
          AND EventType IN ('action_start', 'action_status_change', 'action_complete', 'action_failed', 'action_cancelled')
          AND Timestamp >= fromUnixTimestamp64Nano({start:Int64} - {lookback:Int64})
          AND Timestamp < fromUnixTimestamp64Nano({end:Int64} + {lookback:Int64})
          AND (empty({nodes:Array(String)}) OR has({nodes:Array(String)}, NodeId))
          AND edge != 0
    ),
    -- Which action each edge belongs to: a hash of its node and id (top bit set), or without an id,
    -- of its node and the node's current action (top bit clear; a start after an end begins a new
    -- one: without ids a node does one action at a time). One UInt64 key groups fastest. Edges with
    -- ids need no ordering, so only those without are sorted. At an instant with both starts and
    -- ends (`turn`), the ends come first when an action was open before it (one action ended as the
    -- next began), the starts otherwise (an action that took no time); an action was open when the
    -- last earlier instant with edges of one kind only had starts.
    keyed AS (
        SELECT node, ts, edge, outcome, reported_ms, user, experiment, workflow, workcell, lab,
            bitOr(cityHash64(node, action_id), toUInt64(9223372036854775808)) AS action_key
        FROM edges
        WHERE action_id != ''
        UNION ALL
        SELECT node, ts, edge, outcome, reported_ms, user, experiment, workflow, workcell, lab,
            bitAnd(cityHash64(node, sum(toUInt64(edge = 1 AND previous != 1))
                OVER (PARTITION BY node ORDER BY ts, turn ROWS UNBOUNDED PRECEDING)), toUInt64(9223372036854775807))
                AS action_key
        FROM (
            SELECT *, lagInFrame(edge, 1, 0) OVER (PARTITION BY node ORDER BY ts, turn
                    ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS previous
            FROM (
                SELECT *, if(ifNull(anyLast(only) OVER (PARTITION BY node ORDER BY ts
                        RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 2) = 1, -edge, edge) AS turn
                FROM (
                    SELECT *, if(min(edge) OVER instant = max(edge) OVER instant, toNullable(edge), NULL) AS only
                    FROM edges
                    WHERE action_id = ''
                    WINDOW instant AS (PARTITION BY node ORDER BY ts RANGE BETWEEN CURRENT ROW AND CURRENT ROW)
                )
            )
        )
    ),
    -- One row per action, from its first start to its first end. An end with no start seen began
    -- `duration_ms` before it (when it says so); a start with no end runs `open_limit` at most.
    -- Actions count in the range where they end; one still running counts where `now` is, also
    -- in a range that ends now (the routes' default).
    actions AS (
        SELECT
            node, action_key, workcell, lab, user, experiment, workflow,
            multiIf(starts > 0, first_start, reported > 0, first_end - toInt64(reported * 1e6), first_end) AS s_raw,
            if(ends > 0, first_end, least(s_raw + {open_limit:Int64}, {now:Int64})) AS e_raw,
            if(ends > 0, end_outcome, 0) AS outcome,
            e_raw >= {start:Int64} AND (e_raw < least({end:Int64}, {now:Int64} + 1)
                OR (ends = 0 AND e_raw = {now:Int64} AND {end:Int64} = {now:Int64})) AS counted,
            -- its time inside the range (zero-long when outside)
            least(greatest(s_raw, {start:Int64}), least({end:Int64}, {now:Int64})) AS s,
            greatest(least(e_raw, {end:Int64}, {now:Int64}), s) AS e
        FROM (
            SELECT
                action_key,
                any(node) AS node,
                countIf(edge = 1) AS starts,
                countIf(edge = 2) AS ends,
                minIf(ts, edge = 1) AS first_start,
                minIf(ts, edge = 2) AS first_end,
                argMinIf(outcome, ts, edge = 2) AS end_outcome,
                maxIf(reported_ms, edge = 2) AS reported,
                anyIf(user, user != '') AS user,
                anyIf(experiment, experiment != '') AS experiment,
                anyIf(workflow, workflow != '') AS workflow,
                anyIf(workcell, workcell != '') AS workcell,
                anyIf(lab, lab != '') AS lab
            FROM keyed
            GROUP BY action_key
        )
    )
