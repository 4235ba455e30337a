ALTER TABLE configuration_versions DROP COLUMN ingress;
