-- pbx_zrtp for FreeSWITCH: hold a call until pbx-zrtp has decided its ZRTP state.
-- Usage (dialplan): <action application="lua" data="pbx_zrtp_wait.lua 12"/>
-- Waits at most N seconds (default 12) while pbx_zrtp_state is unset or "pending",
-- polling every 50 ms, then returns; the dialplan then branches on ${pbx_zrtp_state}.
-- Install: copy to FreeSWITCH's scripts directory (mod_lua must be loaded).
local limit = tonumber(argv[1] or "12") or 12
local waited = 0
while session:ready() and waited < limit * 1000 do
  local state = session:getVariable("pbx_zrtp_state")
  if state ~= nil and state ~= "" and state ~= "pending" then
    return
  end
  session:sleep(50)
  waited = waited + 50
end
