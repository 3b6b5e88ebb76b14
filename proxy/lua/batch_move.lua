-- Move a batch to a new status, only from one of the given statuses; all or nothing.
-- KEYS[1]: the batch hash. ARGV: new status, now (epoch s), count of "from" statuses, the
-- "from" statuses, then field/value pairs to set with the move.
-- The new status's `<status>_at` field is set to now (OpenAI's in_progress_at, cancelled_at, ...).
-- Returns 1 when moved, 0 when the batch was in another status (or is gone).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local count = tonumber(ARGV[3])
local allowed = false
for i = 4, 3 + count do
  if ARGV[i] == status then allowed = true end
end
if not allowed then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[1] .. '_at', ARGV[2])
for i = 4 + count, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
