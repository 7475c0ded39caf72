-- Events per bucket and $group, errors (severity ERROR or worse) among them, and each bucket's
-- trailing baseline (the {history:UInt32} buckets before it) for change detection.
-- $bucket is the start of an event's bucket; {bounds:Array(Int64)} the bucket starts and last end.
WITH
    buckets AS (
        SELECT toUInt32(number + 1) AS bucket, {bounds:Array(Int64)}[number + 1] AS b_s
        FROM numbers(toUInt64(length({bounds:Array(Int64)}) - 1))
    ),
    counts AS (
        SELECT
            toUnixTimestamp64Nano(toDateTime64($bucket, 9)) AS b_s,
            $group AS g,
            count() AS n,
            countIf(SeverityNumber >= 17) AS errors
        FROM $logs
        WHERE $where
        GROUP BY b_s, g
    ),
    groups AS (SELECT DISTINCT g FROM counts),
    grid AS (
        SELECT gr.g AS g, k.bucket AS bucket, k.b_s AS b_s, ifNull(c.n, 0) AS n, ifNull(c.errors, 0) AS errors
        FROM groups AS gr
        CROSS JOIN buckets AS k
        LEFT JOIN counts AS c ON c.g = gr.g AND c.b_s = k.b_s
    )
SELECT
    g,
    bucket,
    b_s AS bucket_start_ns,
    n,
    errors,
    count() OVER w AS history,
    avg(n) OVER w AS baseline,
    stddevPop(n) OVER w AS spread
FROM grid
WINDOW w AS (PARTITION BY g ORDER BY bucket ROWS BETWEEN {history:UInt32} PRECEDING AND 1 PRECEDING)
ORDER BY g, bucket
