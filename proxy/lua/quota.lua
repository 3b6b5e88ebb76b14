-- Check and charge one request at every level at once; all or nothing.
-- ARGV: tokens, commit (1 charge, 0 only report), has_user (1/0),
--       key limits rpm, tpm, tokens_per_day, tokens_per_month (-1 = none),
--       and, from tests only, the time in epoch ms (otherwise Redis TIME: one clock for every replica).
-- Team limits and per-user default limits come from the team config hash KEYS[1]:
--   fields team.rpm ... team.tokens_per_month, user.rpm ... user.tokens_per_month.
-- Returns name/value pairs (decoded by name in quota.py, never by position):
--   ok, charged_at, failed_level, failed_kind, failed_limit, retry_after_ms,
--   req_limit, req_remaining, req_reset_ms, tok_limit, tok_remaining, tok_reset_ms,
--   too_big_level, too_big_kind, too_big_limit (a token limit smaller than the request itself)
-- with -1 (or '') where there is nothing to report.

local tokens = tonumber(ARGV[1])
local commit = ARGV[2] == '1'
local has_user = ARGV[3] == '1'
local KINDS = {'rpm', 'tpm', 'tokens_per_day', 'tokens_per_month'}

local now_ms
if ARGV[8] then
  now_ms = tonumber(ARGV[8])
else
  local time = redis.call('TIME')
  now_ms = tonumber(time[1]) * 1000 + floor(tonumber(time[2]) / 1000)
end
local now = floor(now_ms / 1000)
local day, day_end, month, month_end = periods(now)

local conf = {}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do conf[raw[i]] = tonumber(raw[i + 1]) end

local function limit_of(level, kind, k)
  local value
  if level == 'key' then value = tonumber(ARGV[3 + k]) else value = conf[level .. '.' .. kind] end
  if value == nil or value < 0 then return nil end
  return value
end

-- The epoch ms at which one-second bucket `sec` leaves the window. It holds what was charged in
-- [sec, sec + 1), so it stays counted until the last of that is WINDOW seconds old: no span of
-- WINDOW seconds ever holds more than the limit. The price of one-second buckets: what a request
-- used comes back between WINDOW and WINDOW + 1 seconds after it, never sooner.
local function leaves(sec)
  return (sec + 1 + WINDOW) * 1000
end

-- Each window this call reads or charges, settled once: {live total, oldest live second or nil}.
local settled = {}
local function window(key)
  local state = settled[key]
  if state == nil then
    state = {settle(key, now)}
    settled[key] = state
  end
  return state[1], state[2]
end

-- The ms until enough buckets of a settled window have left it to free `need` units. Only a request
-- over the limit asks, the one question that needs the buckets in order: reading and sorting up to
-- 61 of them on every call was most of this script's time.
local function wait_for(key, need)
  local raw = redis.call('HGETALL', key)
  local live = {}
  for i = 1, #raw, 2 do
    local sec = bucket(raw[i])
    if sec ~= nil and leaves(sec) > now_ms then live[#live + 1] = {sec, tonumber(raw[i + 1])} end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, entry in ipairs(live) do
    freed = freed + entry[2]
    if freed >= need then return leaves(entry[1]) - now_ms end
  end
  return leaves(now) - now_ms
end

local fail = nil
local too_big = nil  -- a token limit this request exceeds by itself: no wait can ever admit it
local seen = {}
local team_day = {-1, -1}  -- the team's tokens_per_day limit and its use before this call (-1: no limit)

for _, level in ipairs(levels(has_user)) do
  local name, first = level[1], level[2]
  for k, kind in ipairs(KINDS) do
    local limit = limit_of(name, kind, k)
    if limit ~= nil then
      local key = KEYS[first + k - 1]
      local cost = kind == 'rpm' and 1 or tokens
      local used, wait, reset
      if kind == 'rpm' or kind == 'tpm' then
        local oldest
        used, oldest = window(key)
        reset = oldest ~= nil and leaves(oldest) - now_ms or 0
        wait = used + cost > limit and wait_for(key, used + cost - limit) or 0
      else
        local field, ends = day, day_end
        if kind == 'tokens_per_month' then field, ends = month, month_end end
        used = tonumber(redis.call('HGET', key, field) or '0')
        reset = ends * 1000 - now_ms
        wait = reset
      end
      if used + cost > limit and (fail == nil or wait > fail[4]) then fail = {name, kind, limit, wait} end
      if kind ~= 'rpm' and cost > limit and too_big == nil then too_big = {name, kind, limit} end
      seen[#seen + 1] = {kind == 'rpm', limit, used, cost, reset, kind == 'rpm' or kind == 'tpm'}
      if name == 'team' and kind == 'tokens_per_day' then team_day = {limit, used} end
    end
  end
end

-- A window without a limit is settled too before it is charged: its old buckets leave it (rather
-- than pile up for as long as traffic lasts) and its total is exact when a limit is set.
-- Only the charge that opens a bucket renews the hash's TTL: it then outlives its newest bucket
-- (61 s) by 4 s or more, for one EXPIRE a second instead of one a request.
local function charge_window(key, amount)
  local _, oldest = window(key)
  if add_bucket(key, now, amount, oldest) then redis.call('EXPIRE', key, WINDOW + 5) end
end

-- Only the charge that opens a day's (a month's) field sets the hash's expiry: every later charge
-- of that period would set the very same time again.
local function charge_period(key, field, expires_at)
  if redis.call('HINCRBY', key, field, tokens) == tokens then redis.call('EXPIREAT', key, expires_at) end
end

local charged = fail == nil and commit
if charged then
  for _, level in ipairs(levels(has_user)) do
    local first = level[2]
    charge_window(KEYS[first], 1)
    if tokens > 0 then
      charge_window(KEYS[first + 1], tokens)
      charge_period(KEYS[first + 2], day, day_end + 86400)
      charge_period(KEYS[first + 3], month, month_end + 86400)
    end
  end
end

-- The most restrictive request limit and token limit: the one with the least left.
local req = {-1, -1, -1}
local tok = {-1, -1, -1}
for _, s in ipairs(seen) do
  local left = s[2] - s[3] - (charged and s[4] or 0)
  if left < 0 then left = 0 end
  local reset = s[5]
  if charged and s[6] and s[3] == 0 then reset = leaves(now) - now_ms end
  local best = s[1] and req or tok
  if best[1] < 0 or left < best[2] then best[1], best[2], best[3] = s[2], left, reset end
end

-- The team's day budget after this call, for the gauge an ops dashboard alerts on before it runs out.
local team_day_limit, team_day_used = team_day[1], team_day[2]
if charged and team_day_limit >= 0 then team_day_used = team_day_used + tokens end

local f = fail or {'', '', -1, -1}
local t = too_big or {'', '', -1}
return {'ok', charged and 1 or 0, 'charged_at', charged and now or -1,
        'failed_level', f[1], 'failed_kind', f[2], 'failed_limit', f[3], 'retry_after_ms', f[4],
        'req_limit', req[1], 'req_remaining', req[2], 'req_reset_ms', req[3],
        'tok_limit', tok[1], 'tok_remaining', tok[2], 'tok_reset_ms', tok[3],
        'too_big_level', t[1], 'too_big_kind', t[2], 'too_big_limit', t[3],
        'team_day_used', team_day_used, 'team_day_limit', team_day_limit}
