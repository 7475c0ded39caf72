-- Sessions of a unit ($unit: node, workcell or lab): busy time joined across idle gaps shorter
-- than {gap:Int64}; each with its busy time (the union over the unit's nodes), idle time, actions
-- and who ran them. Continues intervals.sql.
--
-- The unit's actions in order of start, with how far those begun before each reach: a session
-- begins where an action starts more than the gap after that reach, and each action adds to its
-- session's busy time what it covers past the reach (so overlapping actions count once).
, marked AS (
    SELECT *,
        sum(toUInt64(ifNull(s > reach + {gap:Int64}, 1)))
            OVER (PARTITION BY unit ORDER BY s, e ROWS UNBOUNDED PRECEDING) AS session,
        greatest(0, e - greatest(s, ifNull(reach, s))) AS added
    FROM (
        SELECT *, max(toNullable(e))
                OVER (PARTITION BY unit ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
        FROM (SELECT *, $unit AS unit, e > s AS inside FROM actions WHERE e > s OR counted)
    )
)
SELECT
    unit,
    session AS number,
    min(s) AS start_ns,
    max(e) AS end_ns,
    sum(added) AS busy_ns,
    countIf(counted) AS actions,
    countIf(counted AND outcome = 1) AS completed,
    countIf(counted AND outcome = 2) AS failed,
    countIf(counted AND outcome = 3) AS cancelled,
    countIf(counted AND outcome = 0) AS running,
    arraySort(groupUniqArray(node)) AS nodes,
    arraySort(groupUniqArrayIf(user, user != '' AND inside)) AS users,
    arraySort(groupUniqArrayIf(experiment, experiment != '' AND inside)) AS experiments,
    arraySort(groupUniqArrayIf(workflow, workflow != '' AND inside)) AS workflows
FROM marked
GROUP BY unit, session
ORDER BY start_ns, unit
