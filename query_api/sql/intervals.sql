-- labtel utilization: the intervals every report is built from.
--
-- A WITH clause; a report's SELECT follows it. Times are Unix nanoseconds (Int64).
-- Parameters:
--   {start:Int64} {end:Int64}  the range analysed; {now:Int64} nothing counts after it
--   {lookback:Int64}           how far before the range (and after it) edges are read, so actions
--                              and down times that cross its ends are found
--   {open_limit:Int64}         an action with no end event counts as running this long at most
--   {gap:Int64}                idle time that separates two sessions of a unit
--   {nodes:Array(String)}      only these nodes (empty: all)
-- Template fields: $logs (the logs table), $not_expired, $unit (node, workcell or lab: what
-- sessions are made of).
WITH
    -- Every event that starts or ends an action, or starts or stops a node.
    edges AS (
        SELECT
            NodeId AS node,
            toUnixTimestamp64Nano(Timestamp) AS ts,
            EventType AS type,
            lower(if(LogAttributes['status'] != '', LogAttributes['status'], LogAttributes['action_status'])) AS status,
            multiIf(
                type = 'action_start' OR (type = 'action_status_change' AND status IN ('running', 'started', 'in_progress')), 1,
                type IN ('action_complete', 'action_failed', 'action_cancelled')
                    OR (type = 'action_status_change'
                        AND status IN ('completed', 'succeeded', 'finished', 'failed', 'cancelled', 'canceled', 'aborted')), 2,
                type = 'node_start', 3,
                type = 'node_stop', 4,
                0) AS edge,
            multiIf(type = 'action_failed' OR status = 'failed', 'failed',
                    type = 'action_cancelled' OR status IN ('cancelled', 'canceled', 'aborted'), 'cancelled',
                    'completed') AS outcome,
            if(LogAttributes['lab.action.id'] != '', LogAttributes['lab.action.id'], LogAttributes['action_id']) AS action_id,
            toFloat64OrZero(LogAttributes['duration_ms']) AS reported_ms,
            if(LogAttributes['lab.user.id'] != '', LogAttributes['lab.user.id'], ResourceAttributes['lab.user.id']) AS user,
            ExperimentId AS experiment,
            WorkflowId AS workflow,
            if(LogAttributes['lab.workcell.id'] != '', LogAttributes['lab.workcell.id'],
               ResourceAttributes['lab.workcell.id']) AS workcell,
            ResourceAttributes['lab.name'] AS lab
        FROM $logs
        WHERE $not_expired
          AND NodeId != ''
          AND EventType IN ('action_start', 'action_status_change', 'action_complete', 'action_failed',
                            'action_cancelled', 'node_start', 'node_stop')
          AND Timestamp >= fromUnixTimestamp64Nano({start:Int64} - {lookback:Int64})
          AND Timestamp < fromUnixTimestamp64Nano({end:Int64} + {lookback:Int64})
          AND (empty({nodes:Array(String)}) OR has({nodes:Array(String)}, NodeId))
          AND edge != 0
    ),
    -- Edges without an action id: a start after an end (or the first start) begins a new action,
    -- so without ids a node does one action at a time.
    anonymous AS (
        SELECT *, concat('#', toString(sum(toUInt64(edge = 1 AND previous != 1))
                OVER (PARTITION BY node ORDER BY ts, edge ROWS UNBOUNDED PRECEDING))) AS action_key
        FROM (
            SELECT *, lagInFrame(edge, 1, 0)
                    OVER (PARTITION BY node ORDER BY ts, edge ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
                AS previous
            FROM edges
            WHERE edge IN (1, 2) AND action_id = ''
        )
    ),
    keyed AS (
        SELECT node, ts, edge, outcome, reported_ms, user, experiment, workflow, action_id AS action_key
        FROM edges
        WHERE edge IN (1, 2) AND action_id != ''
        UNION ALL
        SELECT node, ts, edge, outcome, reported_ms, user, experiment, workflow, action_key
        FROM anonymous
    ),
    -- One row per action: from its first start to its first end. An end with no start seen began
    -- `duration_ms` before it (when the end says so); a start with no end runs `open_limit` at most.
    actions AS (
        SELECT
            node,
            action_key,
            multiIf(starts > 0, first_start, reported > 0, first_end - toInt64(reported * 1e6), first_end) AS s_raw,
            if(ends > 0, first_end, least(s_raw + {open_limit:Int64}, {now:Int64})) AS e_raw,
            if(ends > 0, end_outcome, 'running') AS outcome,
            user, experiment, workflow
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
                anyIf(workflow, workflow != '') AS workflow
            FROM keyed
            GROUP BY node, action_key
        )
    ),
    -- Action time inside the range, and its union per node: busy time (overlaps count once).
    busy_pieces AS (
        SELECT node AS unit, greatest(s_raw, {start:Int64}) AS s, least(e_raw, {end:Int64}, {now:Int64}) AS e
        FROM actions
        WHERE e > s
    ),
    busy AS ($merge_busy),
    -- The nodes reported: those with events in the range, or busy in it; with their workcell and lab.
    node_units AS (
        SELECT node, anyIf(workcell, workcell != '') AS workcell, anyIf(lab, lab != '') AS lab
        FROM (
            SELECT
                NodeId AS node,
                if(LogAttributes['lab.workcell.id'] != '', LogAttributes['lab.workcell.id'],
                   ResourceAttributes['lab.workcell.id']) AS workcell,
                ResourceAttributes['lab.name'] AS lab
            FROM $logs
            WHERE $not_expired
              AND NodeId != ''
              AND Timestamp >= fromUnixTimestamp64Nano({start:Int64})
              AND Timestamp < fromUnixTimestamp64Nano(least({end:Int64}, {now:Int64}))
              AND (empty({nodes:Array(String)}) OR has({nodes:Array(String)}, NodeId))
            UNION ALL
            SELECT node, workcell, lab FROM edges WHERE node IN (SELECT unit FROM busy_pieces)
        )
        GROUP BY node
    ),
    -- A node is down from node_stop to its next node_start; before a first node_start it was down.
    state_edges AS (
        SELECT node, ts, edge,
            leadInFrame(ts, 1, {end:Int64})
                OVER (PARTITION BY node ORDER BY ts, edge ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS next_ts,
            row_number() OVER (PARTITION BY node ORDER BY ts, edge) AS position
        FROM edges
        WHERE edge IN (3, 4)
    ),
    down_pieces AS (
        SELECT node AS unit, greatest(s, {start:Int64}) AS s, least(e, {end:Int64}, {now:Int64}) AS e
        FROM (
            SELECT node, ts AS s, next_ts AS e FROM state_edges WHERE edge = 4
            UNION ALL
            SELECT node, {start:Int64} - {lookback:Int64} AS s, ts AS e FROM state_edges WHERE edge = 3 AND position = 1
        )
        WHERE least(e, {end:Int64}, {now:Int64}) > greatest(s, {start:Int64})
    ),
    down AS ($merge_down),
    -- Busy time while down (an action the node ran although it said it was stopped): available.
    busy_while_down AS (
        SELECT b.unit AS unit, least(b.e, d.e) AS e, greatest(b.s, d.s) AS s
        FROM busy AS b
        INNER JOIN down AS d ON b.unit = d.unit
        WHERE b.s < d.e AND d.s < b.e
    )
