-- Durable publish of Tidings events (SPEC §4), usable by any service:
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
--
-- Extended form (what the Tidings publisher uses for webhooks), all optional:
--
--   EVALSHA <sha> 4 <stream> <latest> <channel> <dedup-key> <event-json> <history-size> <latest-field> <sharded> <dedup-ttl> [<event-json> <latest-field>]...
--
-- KEYS[4]  a delivery key (tidings:dedup:<source>:<delivery>; on a cluster
--          tidings:dedup:{<id>}:<source>:<delivery>, in the workspace's slot)
-- ARGV[5]  its TTL in seconds
-- ARGV[6…] further events of the same workspace, as (json, latest-field) pairs
--
-- Claim and publish are one atomic step: when the delivery key exists nothing
-- is written and the answer is nil; otherwise the key is set and every event is
-- stored and announced in order, and the answer is the array of their ids.

local events = { { ARGV[1], ARGV[3] } }
local extended = #KEYS >= 4 or #ARGV > 4
for i = 6, #ARGV, 2 do
  events[#events + 1] = { ARGV[i], ARGV[i + 1] or '' }
end
-- Validate everything before writing anything.
for _, e in ipairs(events) do
  if string.sub(e[1], 1, 1) ~= '{' or string.match(e[1], '^{%s*}$') then
    return redis.error_reply('ERR tidings: the event must be a non-empty JSON object')
  end
end
-- A script is not rolled back when a command fails midway, so refuse keys of
-- the wrong type now rather than after the delivery key is set.
local function expect_type(key, wanted)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= wanted then
    return redis.error_reply('ERR tidings: ' .. key .. ' holds a ' .. t .. ', not a ' .. wanted)
  end
end
local wrong = expect_type(KEYS[1], 'stream') or expect_type(KEYS[2], 'hash')
if wrong then return wrong end
if #KEYS >= 4 then
  local ttl = tonumber(ARGV[5])
  if not ttl or ttl < 1 then
    return redis.error_reply('ERR tidings: the delivery key needs a TTL in seconds (ARGV[5])')
  end
  if redis.call('SET', KEYS[4], '1', 'NX', 'EX', ttl) == false then
    return false
  end
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

local ids = {}
for _, e in ipairs(events) do
  local id
  if now_ms > last_ms then
    last_ms, last_seq = now_ms, 0
  else
    last_seq = last_seq + 1
  end
  id = string.format('%.0f-%.0f', last_ms, last_seq)
  local json = '{"id":"' .. id .. '",' .. string.sub(e[1], 2)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, 'event', json)
  if e[2] ~= '' then
    redis.call('HSET', KEYS[2], e[2], json)
  end
  if ARGV[4] == '1' then
    redis.call('SPUBLISH', KEYS[3], json)
  else
    redis.call('PUBLISH', KEYS[3], json)
  end
  ids[#ids + 1] = id
end
if extended then
  return ids
end
return ids[1]
