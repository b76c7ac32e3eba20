DROP TABLE osb_instance_facts;
DROP TABLE osb_catalogs;
ALTER TABLE osb_operations DROP COLUMN request;
ALTER TABLE osb_operations DROP COLUMN runner;
