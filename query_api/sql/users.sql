-- Per $key (user, experiment or workflow): actions ending in the range and their time in it,
-- nodes used, and workflows (counted where they end, or start when still running).
-- Continues intervals.sql.
, workflow_events AS (
    SELECT
        WorkflowId AS workflow,
        toUnixTimestamp64Nano(Timestamp) AS ts,
        EventType AS type,
        UserId AS user,
        ExperimentId AS experiment,
        LogAttributes AS attributes
    FROM $logs
    WHERE $not_expired
      AND WorkflowId != ''
      AND EventType IN ('workflow_start', 'workflow_complete', 'workflow_failed', 'workflow_abort', 'workflow_cancelled')
      AND Timestamp >= fromUnixTimestamp64Nano({start:Int64} - {lookback:Int64})
      AND Timestamp < fromUnixTimestamp64Nano({end:Int64} + {lookback:Int64})
),
-- MADSci's workflow author (`event_data.author`) where an event has no `lab.user.id` of its own:
-- the attribute map is read only where the key index finds an author (reading the map of every
-- workflow event took four fifths of the report)
-- Who and what a workflow is for: its first event that says (the same answer on every run where
-- events of one workflow name several; argMin by time alone: a tuple key made the report 30 % slower).
authors AS (
    SELECT workflow,
        argMinIf(attributes['author'], ts, attributes['author'] != '' AND attributes['lab.user.id'] = '') AS author
    FROM workflow_events
    WHERE mapContains(attributes, 'author')
    GROUP BY workflow
),
workflows AS (
    SELECT w.*, if(a.author != '', a.author, w.user_id) AS user
    FROM (
        SELECT
            workflow,
            argMinIf(user, ts, user != '') AS user_id,
            argMinIf(experiment, ts, experiment != '') AS experiment,
            countIf(type = 'workflow_start') AS starts,
            countIf(type != 'workflow_start') AS ends,
            minIf(ts, type = 'workflow_start') AS started,
            minIf(ts, type != 'workflow_start') AS ended,
            argMinIf(type, ts, type != 'workflow_start') AS end_type
        FROM workflow_events
        GROUP BY workflow
    ) AS w
    LEFT JOIN authors AS a ON a.workflow = w.workflow
),
by_actions AS (
    SELECT
        $key AS key,
        count() AS actions,
        countIf(outcome = 1) AS completed,
        countIf(outcome = 2) AS failed,
        sum(e - s) AS action_ns,
        arraySort(groupUniqArray(node)) AS nodes
    FROM actions
    WHERE counted
    GROUP BY key
),
by_workflows AS (
    SELECT
        $key AS key,
        countIf(ends > 0 AND end_type = 'workflow_complete') AS workflows_completed,
        countIf(ends > 0 AND end_type = 'workflow_failed') AS workflows_failed,
        countIf(ends > 0 AND end_type IN ('workflow_abort', 'workflow_cancelled')) AS workflows_aborted,
        countIf(ends = 0) AS workflows_running,
        sumIf(ended - started, starts > 0 AND ends > 0) AS workflow_ns
    FROM workflows
    WHERE if(ends > 0, ended, started) >= {start:Int64} AND if(ends > 0, ended, started) < least({end:Int64}, {now:Int64} + 1)
    GROUP BY key
)
SELECT
    if(a.key != '', a.key, w.key) AS key,
    ifNull(a.actions, 0) AS actions,
    ifNull(a.completed, 0) AS actions_completed,
    ifNull(a.failed, 0) AS actions_failed,
    ifNull(a.action_ns, 0) AS action_ns,
    ifNull(a.nodes, []) AS nodes,
    ifNull(w.workflows_completed, 0) AS workflows_completed,
    ifNull(w.workflows_failed, 0) AS workflows_failed,
    ifNull(w.workflows_aborted, 0) AS workflows_aborted,
    ifNull(w.workflows_running, 0) AS workflows_running,
    ifNull(w.workflow_ns, 0) AS workflow_ns
FROM by_actions AS a
FULL OUTER JOIN by_workflows AS w ON a.key = w.key
WHERE key != ''
ORDER BY action_ns DESC, key
