-- Per node and bucket: busy, down and overlap time, and actions ending in the bucket (buckets
-- without any are left out; the caller fills in zeros). {bounds:Array(Int64)} holds the bucket
-- starts and the last end; the template fields bucket_of_start and bucket_of_last are the starts
-- of the buckets holding a piece's first and last instant (the same buckets, in SQL).
-- Continues intervals.sql, downtime.sql and reported.sql.
SELECT
    node,
    workcell,
    lab,
    piece.1 AS kind,
    share.1 AS bucket_start_ns,
    sum(share.2) AS ns,
    count() AS pieces,
    countIf(piece.4 = 'completed') AS completed,
    countIf(piece.4 = 'failed') AS failed
FROM (
    SELECT
        node, workcell, lab, piece,
        toUnixTimestamp64Nano(toDateTime64($bucket_of_start, 9)) AS first_bucket,
        toUnixTimestamp64Nano(toDateTime64($bucket_of_last, 9)) AS last_bucket,
        -- most pieces lie in one bucket; a longer one is split over the buckets it overlaps
        if(first_bucket = last_bucket, [(first_bucket, piece.3 - piece.2)],
           arrayMap(p -> (p.1, least(piece.3, p.2) - greatest(piece.2, p.1)),
                    arrayFilter(p -> p.1 < piece.3 AND p.2 > piece.2,
                                arrayZip(arrayPopBack({bounds:Array(Int64)}), arrayPopFront({bounds:Array(Int64)})))))
            AS shares
    FROM reported
    ARRAY JOIN arrayConcat(
        [('node', 0, 0, '')],
        arrayMap(b -> ('busy', b.1, b.2, ''), busy),
        arrayMap(d -> ('down', d.1, d.2, ''), downs),
        arrayMap(o -> ('overlap', o.1, o.2, ''), overlaps),
        arrayMap(x -> ('end', x.1, x.1 + 1, x.2), ends)) AS piece
)
ARRAY JOIN shares AS share
GROUP BY node, workcell, lab, kind, bucket_start_ns
