-- Patterns replace the prefix rule: never both (two concurrent PATCHes, each setting
-- one list, would otherwise store both).
ALTER TABLE workspaces ADD CONSTRAINT workspaces_prefixes_or_patterns
    CHECK (cardinality(trigger_prefixes) = 0 OR cardinality(trigger_patterns) = 0);
