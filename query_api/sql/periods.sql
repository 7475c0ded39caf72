-- Per node and bucket: busy time (the union of the node's actions in the bucket), down time,
-- busy time while down, and actions ending in the bucket; a node and bucket may come in several
-- rows (the caller adds them up) and buckets without any are left out (the caller fills in zeros).
-- {bounds:Array(Int64)} holds the bucket starts and the last end; the template field
-- bucket_of_end is the start of the bucket holding an action's end (the same buckets, in SQL).
-- Continues intervals, downtime and seen.
, per_node AS (
    SELECT
        node,
        anyIf(workcell, workcell != '') AS workcell,
        anyIf(lab, lab != '') AS lab,
        groupArrayIf(s, e > s) AS starts,
        groupArrayIf(e, e > s) AS ends,
        -- the actions ending in each bucket: (bucket starts, actions, completed, failed)
        sumMapIf([toUnixTimestamp64Nano(toDateTime64($bucket_of_end, 9))],
                 [toUInt64(1)], [toUInt64(outcome = 1)], [toUInt64(outcome = 2)], counted) AS ended
    FROM actions
    GROUP BY node
),
reported AS (
    SELECT
        if(u.node != '', u.node, b.node) AS node,
        if(u.workcell != '', u.workcell, b.workcell) AS workcell,
        if(u.lab != '', u.lab, b.lab) AS lab,
        u.node != '' AS seen,
        b.starts AS starts, b.ends AS ends, b.ended AS ended, d.downs AS downs
    FROM seen AS u
    FULL OUTER JOIN per_node AS b ON u.node = b.node
    LEFT JOIN downtime AS d ON d.node = if(u.node != '', u.node, b.node)
),
-- The sweep of the node's time line with the bucket bounds on it: busy time, down time and busy
-- time while down per bucket (by its number in bounds; the template field bucket_sums).
cells AS (
    SELECT node, workcell, lab, arrayConcat(
        -- (bucket start, busy, down, overlap, actions, completed, failed)
        arrayMap(c -> ({bounds:Array(Int64)}[c.1], c.2, c.3, c.4, toUInt64(0), toUInt64(0), toUInt64(0)),
                 arrayFilter(c -> c.1 >= 1 AND c.1 < length({bounds:Array(Int64)}),
                             arrayZip(sums.1, sums.2, sums.3, sums.4))),
        arrayMap(c -> (c.1, 0, 0, 0, c.2, c.3, c.4), arrayZip(ended.1, ended.2, ended.3, ended.4)),
        -- a node seen in the range is reported, whatever it did
        if(seen, [({bounds:Array(Int64)}[1], 0, 0, 0, toUInt64(0), toUInt64(0), toUInt64(0))], [])) AS cell
    FROM (SELECT *, $bucket_sums AS sums FROM (SELECT *, $bucket_sweep AS sweep FROM reported))
)
SELECT
    node,
    workcell,
    lab,
    cell.1 AS bucket_start_ns,
    cell.2 AS busy_ns,
    cell.3 AS down_ns,
    cell.4 AS overlap_ns,
    cell.5 AS actions,
    cell.6 AS completed,
    cell.7 AS failed
FROM cells
ARRAY JOIN cell
