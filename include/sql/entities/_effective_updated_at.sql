-- A row's updated_at, or its created_at when updated_at is missing or earlier
-- (the 'updated_at_from_created_at' repair). Used as {effective_updated_at(<alias>)}.
CASE WHEN {arg}.updated_at IS NULL OR {arg}.updated_at < {arg}.created_at
     THEN {arg}.created_at ELSE {arg}.updated_at END
