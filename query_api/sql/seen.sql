-- The nodes with events in the range, with their workcell and lab. Continues intervals.sql.
-- The whole hours of events without an expiry of their own are read from the hourly nodes
-- projection of the logs table (schema.HOURLY_NODES: ~140 times fewer rows); the partial hours at
-- the ends of the range and the events with an expiry, from the rows.
, seen AS (
    SELECT node, anyIf(workcell, workcell != '') AS workcell, anyIf(lab, lab != '') AS lab
    FROM (
        SELECT NodeId AS node, WorkcellId AS workcell, LabName AS lab
        FROM $logs
        WHERE ExpiresAt = 0
          AND NodeId != ''
          AND toStartOfHour(Timestamp) >= fromUnixTimestamp64Nano($first_hour)
          AND toStartOfHour(Timestamp) < fromUnixTimestamp64Nano($last_hour)
          AND (empty({nodes:Array(String)}) OR has({nodes:Array(String)}, NodeId))
        GROUP BY node, workcell, lab
        UNION ALL
        SELECT NodeId AS node, WorkcellId AS workcell, LabName AS lab
        FROM $logs
        WHERE $not_expired
          AND NodeId != ''
          AND Timestamp >= fromUnixTimestamp64Nano({start:Int64})
          AND Timestamp < fromUnixTimestamp64Nano(least({end:Int64}, {now:Int64}))
          AND (ExpiresAt != 0
               OR Timestamp < fromUnixTimestamp64Nano($first_hour)
               OR Timestamp >= fromUnixTimestamp64Nano($last_hour))
          AND (empty({nodes:Array(String)}) OR has({nodes:Array(String)}, NodeId))
        GROUP BY node, workcell, lab
    )
    GROUP BY node
)
