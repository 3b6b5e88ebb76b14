-- Record a finished chunk of a batch once, however often it ran (a reclaimed unit runs again).
-- KEYS[1]: the batch hash, KEYS[2]: the hash of recorded chunks. ARGV: chunk number, lines
-- completed, lines failed.
-- Returns {done, chunks}: chunks recorded so far and how many there are. The caller that sees
-- done == chunks finalizes (again, after a crash: finalizing is idempotent).
if redis.call('HSETNX', KEYS[2], ARGV[1], '1') == 1 then
  redis.call('HINCRBY', KEYS[1], 'completed', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'done', 1)
end
return {tonumber(redis.call('HGET', KEYS[1], 'done') or '0'), tonumber(redis.call('HGET', KEYS[1], 'chunks') or '0')}
