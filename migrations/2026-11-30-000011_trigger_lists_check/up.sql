-- Patterns replace the prefix rule: never both (two concurrent PATCHes, each setting
-- one list, would otherwise store both).
-- A row that got both from such a race keeps its patterns (they replace the prefix
-- rule anyway); its settings generation moves so a poll in flight records nothing.
UPDATE workspaces
    SET trigger_prefixes = '{}', vcs_settings_generation = vcs_settings_generation + 1
    WHERE cardinality(trigger_prefixes) > 0 AND cardinality(trigger_patterns) > 0;
ALTER TABLE workspaces ADD CONSTRAINT workspaces_prefixes_or_patterns
    CHECK (cardinality(trigger_prefixes) = 0 OR cardinality(trigger_patterns) = 0);
