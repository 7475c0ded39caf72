-- Per node and bucket: busy time (the union of the node's actions in the bucket), down time,
-- busy time while down, and actions ending in the bucket; a node and bucket may come in several
-- rows (the caller adds them up) and buckets without any are left out (the caller fills in zeros).
-- {bounds:Array(Int64)} holds the bucket starts and the last end (utilization.bucket_bounds).
-- Continues intervals, downtime and seen.
, per_node AS (
    SELECT
        node,
        anyIf(workcell, workcell != '') AS workcell,
        anyIf(lab, lab != '') AS lab,
        groupArrayIf(s, e > s) AS starts,
        groupArrayIf(e, e > s) AS ends,
        -- the actions that end in the range: when (one running at the range's end, now, in the last
        -- bucket), and how
        groupArrayIf(least(e_raw, {end:Int64} - 1), counted) AS end_times,
        groupArrayIf(outcome, counted) AS end_outcomes
    FROM actions
    GROUP BY node
),
reported AS (
    SELECT
        if(u.node != '', u.node, b.node) AS node,
        if(u.workcell != '', u.workcell, b.workcell) AS workcell,
        if(u.lab != '', u.lab, b.lab) AS lab,
        u.node != '' AS seen,
        b.starts AS starts, b.ends AS ends, d.downs AS downs, b.end_times AS end_times, b.end_outcomes AS end_outcomes
    FROM seen AS u
    FULL OUTER JOIN per_node AS b ON u.node = b.node
    LEFT JOIN downtime AS d ON d.node = if(u.node != '', u.node, b.node)
),
-- The sweep of the node's time line with the bucket bounds on it: busy time, down time and busy
-- time while down per bucket; and of the actions' ends: how many end in each (the template fields
-- bucket_sweep, steps, bucket_totals, end_sweep and end_counts).
cells AS (
    SELECT node, workcell, lab, arrayConcat(
        -- (bucket start, busy, down, overlap, actions, completed, failed)
        arrayFilter(c -> c.2 != 0 OR c.3 != 0 OR c.5 != 0,
                    arrayZip(arrayPopBack({bounds:Array(Int64)}), totals.1, totals.2, totals.3, counts.1, counts.2, counts.3)),
        -- a node seen in the range is reported, whatever it did
        if(seen, [({bounds:Array(Int64)}[1], 0, 0, 0, 0, 0, 0)], [])) AS cell
    FROM (
        SELECT *, $bucket_totals AS totals, $end_counts AS counts
        FROM (SELECT *, $steps AS steps, $end_sweep AS endings FROM (
            SELECT *, $bucket_sweep AS sweep FROM (SELECT *, $bucket_line AS line FROM reported WHERE $bucket_line_fits)))
    )
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
