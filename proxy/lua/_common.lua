-- Shared by quota.lua, refund.lua and flush.lua (prepended at load time): UTC calendar from epoch
-- seconds, the layout of KEYS, and the rate windows' bookkeeping.
--
-- KEYS[1] is the team's config hash; then four keys per level (key, team, and user when
-- the request names one), in this order:
--   req window (HASH second -> requests), tok window (HASH second -> tokens),
--   day budget (HASH YYYYMMDD -> tokens), month budget (HASH YYYYMM -> tokens).
-- Every key carries the hash tag {t:<team>}, so one script touches one cluster slot.

local floor = math.floor
local WINDOW = 60

-- Howard Hinnant's civil_from_days / days_from_civil (proleptic Gregorian, UTC).
local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- The day and month fields of `sec`, and the epoch seconds at which each period ends.
local function periods(sec)
  local days = floor(sec / 86400)
  local y, m, d = civil_from_days(days)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return string.format('%04d%02d%02d', y, m, d), (days + 1) * 86400,
         string.format('%04d%02d', y, m), days_from_civil(ny, nm, 1) * 86400
end

-- The levels this call covers: {name, first key index}.
local function levels(has_user)
  local out = {{'key', 2}, {'team', 6}}
  if has_user then out[3] = {'user', 10} end
  return out
end

-- Rate windows -----------------------------------------------------------------------------------
-- A window hash holds one-second buckets (field = epoch second, value = count, always > 0: a refund
-- removes a bucket it empties) and two fields of bookkeeping:
--   sum  (field SUM)  the total of every bucket in the hash, so a check reads one field, not up to
--        WINDOW + 1 buckets (reading and summing them all was most of a quota call's Redis time);
--   from (field FROM) the second of the hash's oldest bucket: buckets leave the window in the order
--        of their seconds, so expiring them is a short walk forward from here.
-- Every writer keeps both exact: quota.lua (settle, then add_bucket), refund.lua (take_bucket),
-- flush.lua (settle, then add_bucket, possibly into an older second). A hash with no bucket left is
-- removed whole, bookkeeping and all, so none is ever left without the TTL that charges give it.
--
-- Their fields are named as seconds no clock gives ('-1', '-2'), not as words: a gateway of the
-- previous version (the rest of a rolling deploy, or a rollback) reads every field of a window as a
-- second. These it takes for buckets that left the window long ago and deletes them, where a word
-- would break its arithmetic and fail every quota call on that window. A hash it has charged is
-- then without bookkeeping, like one written before it existed, and the next check here reads it
-- in full and writes it again (see settle).
local SUM, FROM = '-1', '-2'
local STEP = 8  -- seconds looked up per HMGET on the walk: one call covers a dense window's step

-- The second of a window's field; nil for its bookkeeping.
local function bucket(field)
  if field == SUM or field == FROM then return nil end
  return tonumber(field)
end

local function hdel(key, fields)
  for i = 1, #fields, 1000 do  -- unpack has a stack limit: a hash left to grow may hold many
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 999, #fields)))
  end
end

-- Read every field of window `key`, removing buckets older than `cutoff` (nil: none), and write its
-- bookkeeping afresh. Returns the total and the oldest second left (nil: no bucket left).
local function rescan(key, cutoff)
  local raw = redis.call('HGETALL', key)
  local gone, used, first = {}, 0, nil
  for i = 1, #raw, 2 do
    local sec = bucket(raw[i])
    if sec ~= nil and cutoff ~= nil and sec < cutoff then
      gone[#gone + 1] = raw[i]
    elseif sec ~= nil then
      used = used + tonumber(raw[i + 1])
      if first == nil or sec < first then first = sec end
    end
  end
  if first ~= nil then
    redis.call('HSET', key, SUM, used, FROM, first)
  elseif #raw > 0 then
    gone[#gone + 1] = SUM
    gone[#gone + 1] = FROM
  end
  hdel(key, gone)
  return used, first
end

-- Bring window `key` to second `now`: remove the buckets that left it (seconds before now - WINDOW:
-- see `leaves` in quota.lua). Returns the live total and the oldest live second (nil: none).
local function settle(key, now)
  local cutoff = now - WINDOW
  local state = redis.call('HMGET', key, SUM, FROM)
  local sum, from = tonumber(state[1]), tonumber(state[2])
  -- No bookkeeping: a hash written before it existed (Redis keeps a busy window's hash across an
  -- upgrade: each charge renews its TTL), or charged since by the previous version, which deleted
  -- it. Read in full once, which writes it.
  if sum == nil or from == nil then return rescan(key, cutoff) end
  if sum > 0 and from >= cutoff then return sum, from end  -- the common case: nothing has left
  -- Once the cutoff passes a minute boundary (about once a minute in a busy window, and after any
  -- idle longer than the window) the whole hash is read instead of walked: that costs a busy window
  -- one HGETALL a minute, beats a long walk, and puts right a total that went out of step (the
  -- previous version, during a rolling deploy, charges windows it does not check without it).
  if floor(from / WINDOW) ~= floor(cutoff / WINDOW) then return rescan(key, cutoff) end
  local gone, first, sec = {}, nil, from
  while first == nil and sum > 0 and sec <= now do
    local fields = {}
    for s = sec, math.min(sec + STEP - 1, now) do fields[#fields + 1] = s end
    local values = redis.call('HMGET', key, unpack(fields))
    for i = 1, #fields do
      if values[i] then
        if fields[i] >= cutoff then first = fields[i]; break end
        sum = sum - tonumber(values[i])
        gone[#gone + 1] = fields[i]
      end
    end
    sec = sec + #fields
  end
  if first ~= nil and sum > 0 then
    redis.call('HSET', key, SUM, sum, FROM, first)
  elseif first == nil and sum == 0 and redis.call('HLEN', key) == #gone + 2 then
    gone[#gone + 1] = SUM  -- no bucket left: the hash goes
    gone[#gone + 1] = FROM
  else
    -- A total out of step with the buckets, or buckets the walk cannot reach (seconds after `now`:
    -- a clock that stepped back): the full read settles it.
    return rescan(key, cutoff)
  end
  hdel(key, gone)
  return sum, first
end

-- Add `amount` to bucket `sec` of a settled window whose oldest bucket is `first` (nil: none).
-- True when that opened the bucket.
local function add_bucket(key, sec, amount, first)
  local opened = redis.call('HINCRBY', key, sec, amount) == amount
  redis.call('HINCRBY', key, SUM, amount)
  if first == nil or sec < first then redis.call('HSET', key, FROM, sec) end
  return opened
end

-- Take up to `amount` back from bucket `sec` (a refund), never below zero.
local function take_bucket(key, sec, amount)
  local have = tonumber(redis.call('HGET', key, sec) or '0')
  if have <= 0 then return end
  if have > amount then redis.call('HINCRBY', key, sec, -amount)
  else redis.call('HDEL', key, sec) end
  local state = redis.call('HMGET', key, SUM, FROM)
  if not state[1] then return end  -- no bookkeeping yet: the next check reads it all
  if have <= amount and tonumber(state[2]) == sec then
    rescan(key, nil)  -- its oldest bucket is gone: find the next one (a refund is rare)
  else
    redis.call('HINCRBY', key, SUM, -math.min(have, amount))
  end
end
