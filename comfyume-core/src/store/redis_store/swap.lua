-- Writes a job's new record if nobody changed it since it was read (compare-and-swap on its version),
-- and files the job under the index its new state belongs to, in one atomic step.
-- KEYS: 1 job hash, 2 queued jobs (score seq), 3 held jobs (score lease expiry, ms)
-- ARGV: 1 job id, 2 the version read, 3 the new record (JSON), 4 index: 'q' queued, 'h' held, '-' none,
--       5 the lease expiry (ms) when held
-- Returns the new version, or 0 when the record changed meanwhile (nothing was written).
local cur = redis.call('HMGET', KEYS[1], 'ver', 'seq')
if cur[1] ~= ARGV[2] then
  return 0
end
local ver = tonumber(cur[1]) + 1
redis.call('HSET', KEYS[1], 'ver', ver, 'rec', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[4] == 'q' then
  redis.call('ZADD', KEYS[2], cur[2], ARGV[1])
elseif ARGV[4] == 'h' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
end
return ver
