-- Per node and bucket: busy time (the union of the node's actions in the bucket), down time,
-- busy time while down, and actions ending in the bucket; buckets without any are left out (the
-- caller fills in zeros). {bounds:Array(Int64)} holds the bucket starts and the last end; the
-- template fields bucket_of_start and bucket_of_last are the starts of the buckets holding a
-- piece's first and last instant (the same buckets, in SQL). Continues intervals, downtime and seen.
-- Pieces are (kind, start, end, outcome); kinds: 1 busy, 2 an action's end, 3 down, 4 the node was seen.
, tagged AS (
    SELECT node, workcell, lab, piece
    FROM actions
    ARRAY JOIN arrayFilter(p -> p.1 != 0, [if(e > s, (1, s, e, outcome), (0, 0, 0, 0)),
                                            if(counted, (2, e_raw, e_raw + 1, outcome), (0, 0, 0, 0))]) AS piece
    UNION ALL
    SELECT node, '' AS workcell, '' AS lab, (3, d.1, d.2, 0) AS piece FROM downtime ARRAY JOIN downs AS d
    UNION ALL
    SELECT node, workcell, lab, (4, {start:Int64}, {start:Int64} + 1, 0) AS piece FROM seen
),
shared AS (
    SELECT
        node, workcell, lab, piece.1 AS kind, piece.4 AS outcome, share.1 AS bucket_start_ns, share.2 AS s, share.3 AS e
    FROM (
        SELECT
            node, workcell, lab, piece,
            toUnixTimestamp64Nano(toDateTime64($bucket_of_start, 9)) AS first_bucket,
            toUnixTimestamp64Nano(toDateTime64($bucket_of_last, 9)) AS last_bucket,
            -- most pieces lie in one bucket; a longer one is split over the buckets it overlaps
            if(first_bucket = last_bucket, [(first_bucket, piece.2, piece.3)],
               arrayMap(p -> (p.1, greatest(piece.2, p.1), least(piece.3, p.2)),
                        arrayFilter(p -> p.1 < piece.3 AND p.2 > piece.2,
                                    arrayZip(arrayPopBack({bounds:Array(Int64)}), arrayPopFront({bounds:Array(Int64)})))))
                AS shares
        FROM tagged
    )
    ARRAY JOIN shares AS share
),
cells AS (
    SELECT
        node,
        bucket_start_ns,
        anyIf(workcell, workcell != '') AS workcell,
        anyIf(lab, lab != '') AS lab,
        groupArrayIf(s, kind = 1) AS starts,
        groupArrayIf(e, kind = 1) AS ends,
        groupArrayIf((s, e), kind = 3) AS downs,
        countIf(kind = 2) AS actions,
        countIf(kind = 2 AND outcome = 1) AS completed,
        countIf(kind = 2 AND outcome = 2) AS failed
    FROM shared
    GROUP BY node, bucket_start_ns
)
SELECT
    node,
    workcell,
    lab,
    bucket_start_ns,
    $busy AS busy_ns,
    arraySum(arrayMap(d -> d.2 - d.1, downs)) AS down_ns,
    $overlap AS overlap_ns,
    actions,
    completed,
    failed
-- the sweep stays in here: only its sums leave the query
FROM (SELECT *, $sweep AS sweep FROM cells)
