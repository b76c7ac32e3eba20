DROP TABLE osb_instance_facts;
DROP TABLE osb_catalogs;
DROP INDEX osb_operations_owner;
ALTER TABLE osb_operations DROP COLUMN request;
ALTER TABLE osb_operations DROP COLUMN runner;
