-- pbx_zrtp for FreeSWITCH: `zrtp ...` commands at fs_cli, answered by pbx-zrtp.
-- Install: copy to FreeSWITCH's scripts directory (mod_lua), then once, at fs_cli:
--   alias stickyadd zrtp lua pbx_zrtp_admin.lua
-- (a sticky alias lives in FreeSWITCH's core database: it survives restarts). Then:
--   zrtp show calls | zrtp show call <uuid> | zrtp verify <uuid> | zrtp unverify <uuid>
--   zrtp policy <extension> [off|optional|required|auto] | zrtp enroll <uuid> confirm|remove
-- or from a shell: fs_cli -x 'zrtp show calls'.
-- The script fires CUSTOM pbx_zrtp::admin with the words and prints pbx-zrtp's reply
-- (CUSTOM pbx_zrtp::admin_reply), or an error when pbx-zrtp does not answer in 5 s.
local out = stream or { write = function(_, text) freeswitch.consoleLog("NOTICE", text) end }
local words = {}
for i = 1, #argv do
  words[#words + 1] = argv[i]
end
local command = table.concat(words, " ")
if command == "" then
  command = "help"
end
local request = freeswitch.API():execute("create_uuid", "")
request = (request or ""):gsub("%s+", "")
local consumer = freeswitch.EventConsumer("CUSTOM", "pbx_zrtp::admin_reply")
local event = freeswitch.Event("CUSTOM", "pbx_zrtp::admin")
event:addHeader("pbx_zrtp_request", request)
event:addHeader("pbx_zrtp_command", command)
event:fire()
local waited = 0
while waited < 5000 do
  local reply = consumer:pop(1, 250)
  if reply ~= nil and reply:getHeader("pbx_zrtp_request") == request then
    local text = reply:getHeader("pbx_zrtp_reply") or ""
    text = text:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end)
    out:write(text .. "\n")
    return
  end
  if reply == nil then
    waited = waited + 250
  end
end
out:write("-ERR pbx-zrtp did not answer within 5 s: is it running and connected to this"
  .. " FreeSWITCH's event socket?\n")
