-- wrk script for bench/overhead.py: POST an image, optionally with the tier header,
-- and print one JSON line of results.
--
--   wrk -t1 -c8 -d5s -s bench/wrk_post.lua URL -- IMAGE [TIER] [unique]
--
-- With "unique", every request carries a distinct trailer after the JPEG's end marker
-- (decoders ignore it): identical concurrent bodies would otherwise be coalesced by
-- tiergate into one backend call, which no real traffic gets for free.

local image, tier, unique
local counter = 0
local next_thread = 0
thread_tag = ""  -- a global: setup() sets it in each thread's own Lua state

function setup(thread)
  next_thread = next_thread + 1
  thread:set("thread_tag", "t" .. next_thread .. "-")
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  image = file:read("*a")
  file:close()
  tier = args[2]
  unique = args[3] == "unique"
  wrk.method = "POST"
  wrk.body = image
  wrk.headers["Content-Type"] = "image/jpeg"
  if tier ~= nil and tier ~= "" then
    wrk.headers["X-SLA-Tier"] = tier
  end
end

function request()
  if not unique then
    return wrk.request()
  end
  counter = counter + 1
  return wrk.format(nil, nil, nil, image .. thread_tag .. counter)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "mean": %.1f, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
