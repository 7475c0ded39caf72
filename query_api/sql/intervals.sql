-- labtel utilization: the actions and busy time every report is built from.
--
-- A WITH clause; each report's SQL continues it. Each step reads the one before it once (ClickHouse
-- runs a CTE again wherever it is named), so the logs are read once. Times are Unix nanoseconds.
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
            multiIf(EventType = 'action_failed' OR ActionStatus = 'failed', 'failed',
                    EventType = 'action_cancelled' OR ActionStatus IN ('cancelled', 'canceled', 'aborted'), 'cancelled',
                    'completed') AS outcome,
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
    -- Which action each edge belongs to: its id, or without one, the node's current action (a start
    -- after an end begins a new one: without ids a node does one action at a time).
    keyed AS (
        SELECT *, if(action_id != '', action_id, concat('#', toString(ordinal))) AS action_key
        FROM (
            SELECT *, sum(toUInt64(edge = 1 AND previous != 1))
                    OVER (PARTITION BY node, action_id = '' ORDER BY ts, edge ROWS UNBOUNDED PRECEDING) AS ordinal
            FROM (
                SELECT *, lagInFrame(edge, 1, 0) OVER (PARTITION BY node, action_id = '' ORDER BY ts, edge
                        ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS previous
                FROM edges
            )
        )
    ),
    -- One row per action, from its first start to its first end. An end with no start seen began
    -- `duration_ms` before it (when it says so); a start with no end runs `open_limit` at most.
    actions AS (
        SELECT
            node, action_key, workcell, lab, user, experiment, workflow,
            multiIf(starts > 0, first_start, reported > 0, first_end - toInt64(reported * 1e6), first_end) AS s_raw,
            if(ends > 0, first_end, least(s_raw + {open_limit:Int64}, {now:Int64})) AS e_raw,
            if(ends > 0, end_outcome, 'running') AS outcome,
            e_raw >= {start:Int64} AND e_raw < least({end:Int64}, {now:Int64} + 1) AS counted
        FROM (
            SELECT
                node,
                action_key,
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
            GROUP BY node, action_key
        )
    ),
    -- Each action's time inside the range (zero-long when outside), and the run of overlapping
    -- actions of its node it belongs to (a new run wherever a start passes every earlier end).
    pieces AS (
        SELECT *, e > s AS inside, sum(toUInt64(ifNull(s > reach, 1)))
                OVER (PARTITION BY node ORDER BY s, e ROWS UNBOUNDED PRECEDING) AS run
        FROM (
            SELECT *, max(toNullable(e))
                    OVER (PARTITION BY node ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
            FROM (
                SELECT *,
                    least(greatest(s_raw, {start:Int64}), least({end:Int64}, {now:Int64})) AS s,
                    greatest(least(e_raw, {end:Int64}, {now:Int64}), s) AS e
                FROM actions
            )
        )
    ),
    -- Busy time: per node, the union of its actions, one row per run; with the actions counted in
    -- the range (those ending in it) and who ran them.
    runs AS (
        SELECT
            node,
            run,
            min(s) AS s,
            max(e) AS e,
            anyIf(workcell, workcell != '') AS workcell,
            anyIf(lab, lab != '') AS lab,
            countIf(counted) AS actions,
            countIf(counted AND outcome = 'completed') AS completed,
            countIf(counted AND outcome = 'failed') AS failed,
            countIf(counted AND outcome = 'cancelled') AS cancelled,
            countIf(counted AND outcome = 'running') AS running,
            groupArrayIf((e_raw - s_raw) / 1e9, counted AND outcome != 'running') AS durations,
            groupArrayIf((e_raw, outcome), counted) AS ends,
            groupUniqArrayIf(user, user != '' AND inside) AS users,
            groupUniqArrayIf(experiment, experiment != '' AND inside) AS experiments,
            groupUniqArrayIf(workflow, workflow != '' AND inside) AS workflows
        FROM pieces
        GROUP BY node, run
    )
