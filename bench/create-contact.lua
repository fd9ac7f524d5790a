-- wrk script: POST /v1/contacts with a unique email per request (and, with IDEMPOTENCY=1, a
-- unique Idempotency-Key per request). The API key comes from FERRY_BENCH_KEY.
local key = os.getenv("FERRY_BENCH_KEY") or ""
local idempotent = os.getenv("IDEMPOTENCY") == "1"
local thread_ids = 0
local counter = 0

function setup(thread)
  thread_ids = thread_ids + 1
  thread:set("tid", thread_ids)
end

function request()
  counter = counter + 1
  -- `tid` is the global that setup() gave this thread.
  local n = string.format("%d-%d-%d", tid or 0, counter, math.random(1, 1000000000))
  local body = string.format(
    '{"email":"user%s@bench.test","first_name":"Bench","last_name":"User %s","company":"Load Test Ltd","custom":{"plan":"pro"}}',
    n, n)
  local headers = {
    ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/json",
  }
  if idempotent then
    headers["Idempotency-Key"] = "bench-" .. n
  end
  return wrk.format("POST", nil, headers, body)
end

local failures = 0
function response(status, headers, body)
  if status ~= 201 then
    failures = failures + 1
    if failures <= 3 then
      io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
    end
  end
end
