-- Sessions of a unit ($unit: node, workcell or lab): busy time joined across idle gaps shorter
-- than {gap:Int64}; each with its busy time (the union over the unit's nodes), idle time, actions
-- and who ran them. Continues intervals.sql.
, -- the run of overlapping actions of its node each action belongs to (a new run wherever a start
  -- passes every earlier end)
pieces AS (
    SELECT *, e > s AS inside, sum(toUInt64(ifNull(s > reach, 1)))
            OVER (PARTITION BY node ORDER BY s, e ROWS UNBOUNDED PRECEDING) AS run
    FROM (
        SELECT *, max(toNullable(e))
                OVER (PARTITION BY node ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
        FROM actions
    )
),
-- a node's busy time, one row per run, with the actions counted in the range and who ran them
runs AS (
    SELECT
        node,
        run,
        min(s) AS s,
        max(e) AS e,
        anyIf(workcell, workcell != '') AS workcell,
        anyIf(lab, lab != '') AS lab,
        countIf(counted) AS actions,
        countIf(counted AND outcome = 1) AS completed,
        countIf(counted AND outcome = 2) AS failed,
        countIf(counted AND outcome = 3) AS cancelled,
        countIf(counted AND outcome = 0) AS running,
        groupUniqArrayIf(user, user != '' AND inside) AS users,
        groupUniqArrayIf(experiment, experiment != '' AND inside) AS experiments,
        groupUniqArrayIf(workflow, workflow != '' AND inside) AS workflows
    FROM pieces
    GROUP BY node, run
),
marked AS (
    SELECT *,
        sum(toUInt64(ifNull(s > reach + {gap:Int64}, 1))) OVER w AS session,
        sum(toUInt64(ifNull(s > reach, 1))) OVER w AS part
    FROM (
        SELECT *, max(toNullable(e))
                OVER (PARTITION BY unit ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
        FROM (SELECT *, $unit AS unit FROM runs WHERE e > s OR actions > 0)
    )
    WINDOW w AS (PARTITION BY unit ORDER BY s, e ROWS UNBOUNDED PRECEDING)
),
parts AS (
    SELECT
        unit, session, part,
        min(s) AS s, max(e) AS e,
        sum(actions) AS actions, sum(completed) AS completed, sum(failed) AS failed,
        sum(cancelled) AS cancelled, sum(running) AS running,
        groupUniqArray(node) AS nodes,
        arrayDistinct(arrayFlatten(groupArray(users))) AS users,
        arrayDistinct(arrayFlatten(groupArray(experiments))) AS experiments,
        arrayDistinct(arrayFlatten(groupArray(workflows))) AS workflows
    FROM marked
    GROUP BY unit, session, part
)
SELECT
    unit,
    session AS number,
    min(s) AS start_ns,
    max(e) AS end_ns,
    sum(e - s) AS busy_ns,
    sum(actions) AS actions,
    sum(completed) AS completed,
    sum(failed) AS failed,
    sum(cancelled) AS cancelled,
    sum(running) AS running,
    arraySort(arrayDistinct(arrayFlatten(groupArray(nodes)))) AS nodes,
    arraySort(arrayDistinct(arrayFlatten(groupArray(users)))) AS users,
    arraySort(arrayDistinct(arrayFlatten(groupArray(experiments)))) AS experiments,
    arraySort(arrayDistinct(arrayFlatten(groupArray(workflows)))) AS workflows
FROM parts
GROUP BY unit, session
ORDER BY start_ns, unit
