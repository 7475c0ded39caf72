-- Per node and bucket: available and busy time, and actions ending in the bucket; every bucket
-- of every node, zeros included. {bounds:Array(Int64)} holds the bucket starts and the last end;
-- $bucket_of_end is the start of the bucket holding an action's end (the same buckets, in SQL).
-- Follows intervals.sql.
, buckets AS (
    SELECT
        toUInt32(number + 1) AS bucket,
        {bounds:Array(Int64)}[number + 1] AS b_s,
        {bounds:Array(Int64)}[number + 2] AS b_e,
        greatest(0, least(b_e, {end:Int64}, {now:Int64}) - greatest(b_s, {start:Int64})) AS span_ns
    FROM numbers(toUInt64(length({bounds:Array(Int64)}) - 1))
),
pieces AS (
    SELECT unit, kind, bucket, sum(least(e, {bounds:Array(Int64)}[bucket + 1]) - greatest(s, {bounds:Array(Int64)}[bucket])) AS ns
    FROM (
        SELECT unit, 'busy' AS kind, s, e FROM busy
        UNION ALL SELECT unit, 'down' AS kind, s, e FROM down
        UNION ALL SELECT unit, 'overlap' AS kind, s, e FROM busy_while_down
    )
    ARRAY JOIN arrayFilter(
        i -> {bounds:Array(Int64)}[i] < e AND {bounds:Array(Int64)}[i + 1] > s,
        range(toUInt32(1), toUInt32(length({bounds:Array(Int64)})))) AS bucket
    GROUP BY unit, kind, bucket
),
ended AS (
    SELECT
        node,
        toUnixTimestamp64Nano(toDateTime64($bucket_of_end, 9)) AS b_s,
        count() AS actions,
        countIf(outcome = 'completed') AS completed,
        countIf(outcome = 'failed') AS failed
    FROM actions
    WHERE e_raw >= {start:Int64} AND e_raw < least({end:Int64}, {now:Int64} + 1)
    GROUP BY node, b_s
)
SELECT
    n.node AS node,
    n.workcell AS workcell,
    n.lab AS lab,
    k.bucket AS bucket,
    k.b_s AS bucket_start_ns,
    k.span_ns - sumIf(p.ns, p.kind = 'down') + sumIf(p.ns, p.kind = 'overlap') AS available_ns,
    sumIf(p.ns, p.kind = 'busy') AS busy_ns,
    any(ifNull(x.actions, 0)) AS actions,
    any(ifNull(x.completed, 0)) AS completed,
    any(ifNull(x.failed, 0)) AS failed
FROM node_units AS n
CROSS JOIN buckets AS k
LEFT JOIN pieces AS p ON p.unit = n.node AND p.bucket = k.bucket
LEFT JOIN ended AS x ON x.node = n.node AND x.b_s = k.b_s
GROUP BY node, workcell, lab, bucket, bucket_start_ns, k.span_ns
ORDER BY node, bucket
