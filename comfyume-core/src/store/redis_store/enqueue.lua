-- Accepts a job unless its id exists. All keys share the pool's hash tag.
-- KEYS: 1 job hash, 2 seq counter, 3 all jobs (by seq), 4 queued jobs (by seq), 5 the owner's jobs (by seq)
-- ARGV: 1 job id, 2 the record without its workflow (JSON), 3 the workflow (JSON, written once: no later
--       transition rewrites it)
-- Returns {1, seq} when accepted, {0, seq, record, workflow} when the id exists.
local existing = redis.call('HMGET', KEYS[1], 'seq', 'rec', 'wf')
if existing[1] then
  return {0, tonumber(existing[1]), existing[2], existing[3]}
end
local seq = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'ver', 1, 'seq', seq, 'rec', ARGV[2], 'wf', ARGV[3])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
redis.call('ZADD', KEYS[5], seq, ARGV[1])
return {1, seq}
