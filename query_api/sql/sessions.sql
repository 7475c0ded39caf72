-- Sessions of a unit ($unit: node, workcell or lab): its busy time, joined across idle gaps
-- shorter than {gap:Int64}; each with its busy and idle time, actions and who ran them.
-- Follows intervals.sql.
, unit_pieces AS (
    SELECT $unit AS unit, b.s AS s, b.e AS e
    FROM busy AS b
    INNER JOIN node_units AS n ON n.node = b.unit
),
unit_busy AS ($merge_unit_busy),
sessions AS ($merge_sessions),
numbered AS (
    SELECT unit, s, e, row_number() OVER (PARTITION BY unit ORDER BY s) AS number FROM sessions
),
session_busy AS (
    SELECT x.unit AS unit, x.number AS number, sum(b.e - b.s) AS busy_ns
    FROM numbered AS x
    INNER JOIN unit_busy AS b ON b.unit = x.unit
    WHERE b.s >= x.s AND b.e <= x.e
    GROUP BY unit, number
),
session_actions AS (
    SELECT
        x.unit AS unit,
        x.number AS number,
        count() AS actions,
        countIf(a.outcome = 'completed') AS completed,
        countIf(a.outcome = 'failed') AS failed,
        countIf(a.outcome = 'cancelled') AS cancelled,
        countIf(a.outcome = 'running') AS running,
        arraySort(groupUniqArrayIf(a.node, a.node != '')) AS nodes,
        arraySort(groupUniqArrayIf(a.user, a.user != '')) AS users,
        arraySort(groupUniqArrayIf(a.experiment, a.experiment != '')) AS experiments,
        arraySort(groupUniqArrayIf(a.workflow, a.workflow != '')) AS workflows
    FROM numbered AS x
    INNER JOIN (
        SELECT actions.*, $unit AS unit FROM actions INNER JOIN node_units AS n ON n.node = actions.node
    ) AS a ON a.unit = x.unit
    WHERE greatest(a.s_raw, {start:Int64}) >= x.s AND greatest(a.s_raw, {start:Int64}) <= x.e
    GROUP BY unit, number
)
SELECT
    x.unit AS unit,
    x.number AS number,
    x.s AS start_ns,
    x.e AS end_ns,
    ifNull(sb.busy_ns, 0) AS busy_ns,
    ifNull(sa.actions, 0) AS actions,
    ifNull(sa.completed, 0) AS completed,
    ifNull(sa.failed, 0) AS failed,
    ifNull(sa.cancelled, 0) AS cancelled,
    ifNull(sa.running, 0) AS running,
    sa.nodes AS nodes,
    sa.users AS users,
    sa.experiments AS experiments,
    sa.workflows AS workflows
FROM numbered AS x
LEFT JOIN session_busy AS sb ON sb.unit = x.unit AND sb.number = x.number
LEFT JOIN session_actions AS sa ON sa.unit = x.unit AND sa.number = x.number
ORDER BY start_ns, unit
