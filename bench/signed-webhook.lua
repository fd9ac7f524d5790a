-- wrk script: POST one pre-signed HubSpot webhook batch (signature v3) over and over. The body,
-- its timestamp and signature come from the files and variables bench/webhook-ingest.sh sets up
-- just before the run (the receiver refuses timestamps more than five minutes old).
local file = assert(io.open(os.getenv("WEBHOOK_BODY_FILE"), "rb"))
local body = file:read("*a")
file:close()
local headers = {
  ["Content-Type"] = "application/json",
  ["X-HubSpot-Signature-v3"] = os.getenv("WEBHOOK_SIGNATURE"),
  ["X-HubSpot-Request-Timestamp"] = os.getenv("WEBHOOK_TIMESTAMP"),
}
local request_text

function init(args)
  request_text = wrk.format("POST", nil, headers, body)
end

function request()
  return request_text
end

local failures = 0
function response(status, headers, body)
  if status ~= 204 then
    failures = failures + 1
    if failures <= 3 then
      io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
    end
  end
end
