-- Durable publish of one Tidings event (SPEC §4), usable by any service:
--
--   EVALSHA <sha1 of this file> 3 <stream> <latest> <channel> <event-json> <history-size> <latest-field> <sharded>
--
-- KEYS[1]  stream   workspace:<id>:events   (Redis Cluster: workspace:{<id>}:events)
-- KEYS[2]  hash     workspace:<id>:latest   (Redis Cluster: workspace:{<id>}:latest)
-- KEYS[3]  channel  workspace:<id>          (Redis Cluster: workspace:{<id>})
-- ARGV[1]  the event as a JSON object WITHOUT "id" (the script assigns it)
-- ARGV[2]  history size: the stream is trimmed with MAXLEN ~ this
-- ARGV[3]  latest-state field, "<type>:<entity_ref>" for metrics_update and
--          health_update events that carry an entity_ref, else ""
-- ARGV[4]  "1" to announce with SPUBLISH (Redis Cluster), "0" for PUBLISH
--
-- Returns the event id, which is also the stream entry id. The id is chosen
-- here (clock, or the previous id's next sequence) so that the stored and the
-- published JSON both carry it, and the channel order equals the stream order.

local event = ARGV[1]
if string.sub(event, 1, 1) ~= '{' or string.match(event, '^{%s*}$') then
  return redis.error_reply('ERR tidings: the event must be a non-empty JSON object')
end

local last = '0-0'
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
if type(info) == 'table' and info.err == nil then
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
local dash = string.find(last, '-', 1, true)
local last_ms = tonumber(string.sub(last, 1, dash - 1))
local last_seq = tonumber(string.sub(last, dash + 1))
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local id
if now_ms > last_ms then
  id = string.format('%.0f-0', now_ms)
else
  id = string.format('%.0f-%.0f', last_ms, last_seq + 1)
end

local json = '{"id":"' .. id .. '",' .. string.sub(event, 2)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, 'event', json)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[3], json)
end
if ARGV[4] == '1' then
  redis.call('SPUBLISH', KEYS[3], json)
else
  redis.call('PUBLISH', KEYS[3], json)
end
return id
