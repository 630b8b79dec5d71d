-- pbx_zrtp for FreeSWITCH: hold a call until pbx-zrtp has decided, and fail closed.
-- Usage (dialplan): <action application="lua" data="pbx_zrtp_wait.lua 12"/>
-- Waits at most N seconds (default 12) while the variable (default pbx_zrtp_state) is
-- unset or "pending", polling every 50 ms. Waiting on pbx_zrtp_state, it then hangs up
-- (BEARERCAPABILITY_NOTAVAIL) a call that is not secure when
--   - the call asked for required, or pbx-zrtp resolved its policy to required
--     (pbx_zrtp_active_policy), or
--   - pbx-zrtp never answered (pbx_zrtp_state unset: not running, ESL down, slow) and
--     the call did not itself ask for off or optional: "auto" may resolve to required,
--     and only pbx-zrtp knows;
-- otherwise it returns and the dialplan goes on (and may branch on pbx_zrtp_state).
-- The enrollment extension waits on pbx_zrtp_enroll_result the same way (no hangup):
--   <action application="lua" data="pbx_zrtp_wait.lua 5 pbx_zrtp_enroll_result"/>
-- Install: copy to FreeSWITCH's scripts directory (mod_lua must be loaded).
local limit = tonumber(argv[1] or "12") or 12
local name = argv[2] or "pbx_zrtp_state"
local waited = 0
while session:ready() and waited < limit * 1000 do
  local value = session:getVariable(name)
  if value ~= nil and value ~= "" and value ~= "pending" then
    break
  end
  session:sleep(50)
  waited = waited + 50
end
if name ~= "pbx_zrtp_state" or not session:ready() then
  return
end
local state = session:getVariable("pbx_zrtp_state") or ""
if state == "secure" then
  return
end
-- what the dialplan asked for, read as pbx-zrtp reads it (zrtp_secure_media=true: optional)
local function word(variable)
  return string.lower((session:getVariable(variable) or ""):match("^%s*(.-)%s*$"))
end
local requested = word("pbx_zrtp_policy")
if requested == "" then
  local legacy = word("zrtp_secure_media")
  if legacy == "true" or legacy == "yes" or legacy == "1" or legacy == "optional" then
    requested = "optional"
  elseif legacy == "required" or legacy == "mandatory" then
    requested = "required"
  end
end
local active = session:getVariable("pbx_zrtp_active_policy") or ""
if requested == "required" or active == "required"
    or (state == "" and requested ~= "off" and requested ~= "optional") then
  local uuid = session:getVariable("uuid") or "?"
  local why = state == "" and "not answered by pbx-zrtp" or state
  local reason = session:getVariable("pbx_zrtp_fail_reason") or ""
  session:consoleLog("WARNING", "pbx_zrtp: " .. uuid .. " required ZRTP but is " .. why
    .. ": " .. reason .. "; hanging up\n")
  session:hangup("BEARERCAPABILITY_NOTAVAIL")
end
