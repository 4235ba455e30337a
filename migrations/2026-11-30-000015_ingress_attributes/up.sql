-- Where a configuration version's commit came from (TFE's ingress attributes, SPEC
-- section 10), as the poller knew it when it recorded the run; NULL before this version.
ALTER TABLE configuration_versions ADD COLUMN ingress JSONB;
