-- Argo CD health check of instantrecovery.dev/BackupRepository (Lua 5.1, as Argo CD runs it).
-- Install it under resource.customizations.health.instantrecovery.dev_BackupRepository in
-- argocd-cm (docs/gitops.md). With it, a sync wave holding the repository ends only once the
-- operator has reached the repository.
--
--   Healthy      the repository answered the operator's last check (Reachable is True).
--   Degraded     it did not (Reachable is False): the message says why.
--   Progressing  not checked yet, or checked for an older spec (observedGeneration behind
--                metadata.generation).

local hs = {}

local reachable = nil
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Reachable" then
      reachable = c
    end
  end
end

local generation = obj.metadata.generation
if reachable == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check the repository"
elseif generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check generation " .. tostring(generation)
elseif reachable.status == "True" then
  hs.status = "Healthy"
  hs.message = reachable.message
else
  hs.status = "Degraded"
  hs.message = reachable.reason .. ": " .. reachable.message
end
return hs
