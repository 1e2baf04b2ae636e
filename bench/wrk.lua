-- wrk script for the gateway benchmarks: POST one body file with its content type.
--   wrk ... -s bench/wrk.lua URL -- BODY_FILE CONTENT_TYPE MODE [ANALYSIS_ID JOB_ID NONCE]
-- MODE "fixed": the same bytes every time (the gateway never parses them).
-- MODE "variant": every request a new analysis and job (fresh UUIDs in place of
-- ANALYSIS_ID and JOB_ID), so a worker behind the gateway ingests every one.
-- done() prints one JSON line with the counts and latency percentiles.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  body = read_file(args[1])
  headers = { ["Content-Type"] = args[2] }
  mode = args[3]
  if mode == "variant" then
    nonce = tonumber(args[6])
    local a = { string.find(body, args[4], 1, true) }
    local j = { string.find(body, args[5], 1, true) }
    -- pieces around the two ids, in body order
    if a[1] < j[1] then
      first_is_analysis = true
      p1, p2, p3 = body:sub(1, a[1] - 1), body:sub(a[2] + 1, j[1] - 1), body:sub(j[2] + 1)
    else
      first_is_analysis = false
      p1, p2, p3 = body:sub(1, j[1] - 1), body:sub(j[2] + 1, a[1] - 1), body:sub(a[2] + 1)
    end
  end
  fixed = wrk.format("POST", nil, headers, body)
end

function request()
  if mode ~= "variant" then
    return fixed
  end
  counter = counter + 1
  local analysis = string.format("%08x-%04x-4000-a000-%012x", nonce, tid, counter)
  local job = string.format("%08x-%04x-4000-b000-%012x", nonce, tid, counter)
  local b
  if first_is_analysis then
    b = p1 .. analysis .. p2 .. job .. p3
  else
    b = p1 .. job .. p2 .. analysis .. p3
  end
  return wrk.format("POST", nil, headers, b)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
