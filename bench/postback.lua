-- wrk script: every request is a unique Keitaro postback (a new click id and order id), so
-- the relay stores each one (no dedupe hits). The same script drives the bare server.
local counter = 0
-- WRK_TAG (optional) tells apart wrk processes started in the same second.
local prefix = string.format("%x%x%s", os.time(), math.random(0, 0xffffff), os.getenv("WRK_TAG") or "")

request = function()
  counter = counter + 1
  return wrk.format("GET", "/postback/keitaro?subid=" .. prefix .. "-" .. counter
    .. "&status=sale&revenue=25.00&currency=usd&tid=T-" .. prefix .. "-" .. counter)
end
