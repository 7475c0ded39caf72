-- The nodes with events in the range, with their workcell and lab. Continues intervals.sql.
, seen AS (
    SELECT NodeId AS node, anyIf(WorkcellId, WorkcellId != '') AS workcell, anyIf(LabName, LabName != '') AS lab
    FROM $logs
    WHERE $not_expired
      AND NodeId != ''
      AND Timestamp >= fromUnixTimestamp64Nano({start:Int64})
      AND Timestamp < fromUnixTimestamp64Nano(least({end:Int64}, {now:Int64}))
      AND (empty({nodes:Array(String)}) OR has({nodes:Array(String)}, NodeId))
    GROUP BY node
)
