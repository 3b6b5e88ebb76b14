-- Replace a key record only if it is still the one the caller read, so a PATCH neither brings back a
-- key revoked meanwhile (the record is gone) nor overwrites another PATCH (the record changed).
-- KEYS[1]: the record ({p}:key:<sha256>). ARGV: the record as read, the record to write.
-- Returns 1 written, 0 changed since it was read, -1 gone.

local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
