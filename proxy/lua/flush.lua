-- Apply one batch of accounting kept in process during a store outage, exactly once.
-- KEYS[1] is the batch's marker ({t:<team>}:flush:<batch id>); KEYS[2..] the counters it touches,
-- all in the team's hash-tag slot. ARGV[1] is the marker's lifetime in seconds; then five
-- values per increment: key index (into KEYS), kind, field, amount, extra.
--   kind 'h': HINCRBY key field amount; extra is a TTL in seconds given to a key that has none.
--   kind 'w': a rate window (HASH second -> count, see _common.lua); extra is the epoch second of
--             the last charge. Still inside the window (quota.lua keeps a bucket until it is WINDOW s
--             old), it lands in that second's bucket (the store's current one, for a second its clock
--             has not reached), so the limit is as spent as if the store had seen it; past it, the
--             window has moved on and nothing is added.
-- Returns 1 when applied, 0 when this batch was applied before (a retry after a lost reply).

if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then
  return 0
end
local now = tonumber(redis.call('TIME')[1])
for i = 2, #ARGV, 5 do
  local key = KEYS[tonumber(ARGV[i])]
  local kind, field, amount, extra = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  if kind == 'h' then
    redis.call('HINCRBY', key, field, amount)
    if redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, extra) end
  elseif extra >= now - WINDOW then
    local sec = extra
    if sec > now then sec = now end
    -- Settled first, so the window's bookkeeping is there to keep: `from` moves back when `sec` is
    -- older than every bucket it holds.
    local _, oldest = settle(key, now)
    add_bucket(key, sec, amount, oldest)
    redis.call('EXPIRE', key, WINDOW + 5)
  end
end
return 1
