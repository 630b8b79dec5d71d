-- pbx_zrtp for FreeSWITCH: hold a call until pbx-zrtp has decided.
-- Usage (dialplan): <action application="lua" data="pbx_zrtp_wait.lua 12"/>
-- Waits at most N seconds (default 12) while the variable (default pbx_zrtp_state) is
-- unset or "pending", polling every 50 ms, then returns; the dialplan then branches on
-- it. The enrollment extension waits on pbx_zrtp_enroll_result the same way:
--   <action application="lua" data="pbx_zrtp_wait.lua 5 pbx_zrtp_enroll_result"/>
-- Install: copy to FreeSWITCH's scripts directory (mod_lua must be loaded).
local limit = tonumber(argv[1] or "12") or 12
local name = argv[2] or "pbx_zrtp_state"
local waited = 0
while session:ready() and waited < limit * 1000 do
  local value = session:getVariable(name)
  if value ~= nil and value ~= "" and value ~= "pending" then
    return
  end
  session:sleep(50)
  waited = waited + 50
end
