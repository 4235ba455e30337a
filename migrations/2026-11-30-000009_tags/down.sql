DELETE FROM runs WHERE trigger_reason = 'tag';
DROP INDEX runs_one_tag_run_per_commit;
ALTER TABLE runs DROP CONSTRAINT runs_tag_matches_trigger;
ALTER TABLE runs DROP CONSTRAINT runs_trigger_reason_check;
ALTER TABLE runs ADD CONSTRAINT runs_trigger_reason_check
    CHECK (trigger_reason IN ('push', 'pull_request'));
ALTER TABLE runs DROP COLUMN vcs_tag;
DROP TABLE workspace_seen_tags;
ALTER TABLE workspaces DROP COLUMN vcs_tags_regex, DROP COLUMN vcs_tags_baselined_at;
