-- Shared by quota.lua and refund.lua (prepended at load time): UTC calendar from epoch
-- seconds, and the layout of KEYS.
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
