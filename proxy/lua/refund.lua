-- Give back the tokens of a charge whose backend call failed: the very buckets it charged
-- (its one-second window bucket, its day, its month), clamped at zero, never below.
-- ARGV: charged_at (epoch seconds, from quota.lua), tokens, has_user (1/0), and request (1/0): 1 gives
-- back the request too, from its rpm bucket, for a charge that should never have been made.

local sec = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local request = ARGV[4] == '1'
local day, _, month = periods(sec)

-- A day or month budget's field (a window's bucket goes through take_bucket, which keeps its bookkeeping).
local function take(key, field, amount)
  if amount <= 0 then return end
  local have = tonumber(redis.call('HGET', key, field) or '0')
  if have <= 0 then return end
  if have <= amount then redis.call('HDEL', key, field)
  else redis.call('HINCRBY', key, field, -amount) end
end

for _, level in ipairs(levels(ARGV[3] == '1')) do
  local first = level[2]
  if request then take_bucket(KEYS[first], sec, 1) end
  if tokens > 0 then take_bucket(KEYS[first + 1], sec, tokens) end
  take(KEYS[first + 2], day, tokens)
  take(KEYS[first + 3], month, tokens)
end
return 1
