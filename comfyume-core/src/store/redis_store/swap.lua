-- Writes a job's new record if nobody changed it since the version the caller knows (compare-and-swap),
-- and files the job under the index its new state belongs to, in one atomic step.
-- KEYS: 1 job hash, 2 queued jobs (score seq), 3 held jobs (score lease expiry, ms)
-- ARGV: 1 job id, 2 the version known, 3 the new record (JSON), 4 index: 'q' queued, 'h' held, '-' none,
--       5 the lease expiry (ms) when held
-- Returns {1, new version} when written; {0, version, seq, record} when the record changed meanwhile
-- (nothing was written: the caller decides again on the current record without reading it); {-1} when
-- the job does not exist.
local cur = redis.call('HMGET', KEYS[1], 'ver', 'seq', 'rec')
if not cur[1] then
  return {-1}
end
if cur[1] ~= ARGV[2] then
  return {0, tonumber(cur[1]), tonumber(cur[2]), cur[3]}
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
return {1, ver}
