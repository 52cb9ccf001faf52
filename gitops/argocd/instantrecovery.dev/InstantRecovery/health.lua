-- Argo CD health check of instantrecovery.dev/InstantRecovery (Lua 5.1, as Argo CD runs it).
-- Install it under resource.customizations.health.instantrecovery.dev_InstantRecovery in
-- argocd-cm (docs/gitops.md).
--
--   Healthy      Completed and Ready: the target runs as the primary; or a Publish that
--                serves (Published), or was torn down once it ended (Unpublished).
--   Suspended    waiting for a person or a time: a Manual switchover awaiting approval, or a
--                Scheduled one before its time.
--   Degraded     Failed, or Waiting: a step failed and is retried on its own, but it needs
--                watching (the repository is unreachable, a Pod died, ...); or Aborted: given
--                up before its switchover, nothing recovered.
--   Progressing  every other phase, and any status older than the spec (observedGeneration
--                behind metadata.generation).

local hs = {}

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

-- "Phase: message", or "Phase" alone.
local function describe(status)
  if status.message ~= nil and status.message ~= "" then
    return status.phase .. ": " .. status.message
  end
  return status.phase
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the recovery"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == "Completed" then
  local ready = condition(status, "Ready")
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = ready.message
  else
    hs.status = "Progressing"
    hs.message = "Completed: cleaning up"
  end
elseif phase == "Published" then
  hs.status = "Healthy"
  hs.message = describe(status)
elseif phase == "Unpublished" or phase == "Aborted" then
  -- Torn down once timings.endedAt is set.
  local ended = status.timings ~= nil and status.timings.endedAt ~= nil
  if phase == "Aborted" and ended then
    hs.status = "Degraded"
  elseif ended then
    hs.status = "Healthy"
  else
    hs.status = "Progressing"
  end
  hs.message = describe(status)
elseif phase == "Failed" or phase == "Waiting" then
  -- Waiting's message says which retry comes when.
  hs.status = "Degraded"
  hs.message = describe(status)
elseif phase == "ReadyForSwitchover" and (status.reason == "AwaitingApproval" or status.reason == "AwaitingSchedule") then
  hs.status = "Suspended"
  hs.message = describe(status)
elseif phase == "Syncing" and status.progress ~= nil and status.progress.percentCopied ~= nil then
  hs.status = "Progressing"
  hs.message = "Syncing: " .. tostring(status.progress.percentCopied) .. "% copied to the target"
else
  hs.status = "Progressing"
  hs.message = describe(status)
end
return hs
